# A small closure that exercises every corner of the NAR and tar formats:
# references, a self-reference, relative, absolute and dangling symlinks,
# executables, empty files and dirs, odd file names, and a program to run.
#
# Plain builtins.derivation with /bin/sh as builder: no nixpkgs needed, so
# the machine's Nix alone builds it (sandbox off, PATH from the host).
{ system ? builtins.currentSystem }:
let
  sh = script: name: extra: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-ec" script ];
    PATH = "/usr/bin:/bin";
  } // extra);

  data = sh ''
    mkdir -p $out/share/empty-dir $out/share/odd $out/lib
    printf 'hello from nix-prefix\n' > $out/share/message
    : > $out/share/empty-file
    printf '12345678' > $out/share/eight-bytes
    printf 'x' > $out/share/odd/B
    printf 'y' > $out/share/odd/_
    printf 'z' > $out/share/odd/a
    printf 'space' > "$out/share/odd/with space"
    printf 'unicode' > "$out/share/odd/grüße-файл"
    printf 'dash' > "$out/share/odd/-leading-dash"
    printf 'hash' > "$out/share/odd/#hash%percent"
    long=$(printf 'n%.0s' $(seq 1 200))
    printf 'long' > "$out/share/odd/$long"
    head -c 70000 /dev/zero | tr '\0' 'q' > $out/share/bigger
    ln -s message $out/share/relative-link
    ln -s $out/share/message $out/share/self-link
    ln -s ../nowhere $out/share/dangling-link
    ln -s ../share $out/lib/to-share-dir
    # The store dir hidden in compressed bytes: a retarget must report it.
    printf '%s\n' "$out" | gzip -n > $out/share/where.gz
  '' "nix-prefix-sample-data" { };

  hello = sh ''
    mkdir -p $out/bin
    # Shell builtins only: the program must run with nothing but /bin/sh.  The
    # message lives in another store path, so running it proves a reference.
    cat > $out/bin/hello-nix-prefix <<EOF
    #!/bin/sh
    IFS= read -r message < ${data}/share/message
    printf '%s\n' "\$message"
    EOF
    chmod 0755 $out/bin/hello-nix-prefix
  '' "hello-nix-prefix" { };

  # A root nothing refers to and that refers to nothing.
  lonely = sh ''
    printf 'a store path that is a single file\n' > $out
  '' "nix-prefix-sample-lonely" { };
in
{ inherit data hello lonely; }
