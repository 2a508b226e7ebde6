# Derivation corner cases for tests/test_native_corpus.py: built with real Nix
# (builder /bin/sh, the host's coreutils) at a long store dir, retargeted to a
# shorter one, and compared path by path with a native build there.
# Paths whose name is in BINARY (test_native_corpus.py) hold a file that is not
# text by the rule of payload/textfile.py and names the store dir; every other
# path should be byte-identical to the native build.
let
  mk = name: script: attrs: builtins.derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  } // attrs);

  fixed = name: script: mode: algo: hash: mk name script {
    outputHashMode = mode; outputHashAlgo = algo; outputHash = hash;
  };

  # builtins.toFile texts, one referring to the other.
  baseConf = builtins.toFile "base.conf" "colour = blue\n";
  incConf = builtins.toFile "inc.conf" "include ${baseConf}\nsize = 3\n";

  # A source path (builtins.path) and a filtered one (builtins.filterSource).
  data = builtins.path { path = ./data.txt; name = "corpus-data"; };
  filtered = builtins.filterSource (p: t: baseNameOf p == "data.txt") ./.;

  # An interpreter in the store, for #! lines.
  interp = mk "interp" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\nexec /bin/sh "$@"\n' > $out/bin/run
    chmod +x $out/bin/run
  '' {};

  scripts = mk "scripts" ''
    mkdir -p $out/bin $out/libexec
    printf '#!%s/bin/run\necho "hello from %s, data in %s"\n' ${interp} $out ${data} > $out/bin/hello
    printf '#! %s/bin/run -e\nexec %s/bin/hello "$@"\n' ${interp} $out > $out/bin/spaced
    chmod +x $out/bin/hello $out/bin/spaced
    ln -s $out/bin/hello $out/libexec/hello-link
    ln -s ../bin/hello $out/libexec/relative-link
  '' {};

  # Three outputs: text only in out and dev, a binary (a fake shared object
  # with a RUNPATH-like string) in lib.
  libfoo = mk "libfoo" ''
    mkdir -p $out/share/applications $out/etc $lib/lib $dev/lib/pkgconfig $dev/include
    printf 'prefix=%s\nlibdir=%s/lib\nincludedir=%s/include\n\nName: foo\nVersion: 1.0\nLibs: -L$''${libdir} -lfoo\nCflags: -I$''${includedir}\n' \
      $out $lib $dev > $dev/lib/pkgconfig/foo.pc
    printf '/* foo.h */\n#define FOO_DATADIR "%s/share"\n' $out > $dev/include/foo.h
    ln -s $lib/lib $dev/lib/libs
    printf "# libfoo.la - a libtool library file\ndlname='libfoo.so.1'\nlibrary_names='libfoo.so.1.0.0 libfoo.so.1 libfoo.so'\ndependency_libs=' -L%s/lib'\nlibdir='%s/lib'\n" \
      ${interp} $lib > $lib/lib/libfoo.la
    printf '\177ELF\002\001\001\000\000\000\000\000\000\000\000\000RUNPATH=%s/lib\000' $lib > $lib/lib/libfoo.so.1.0.0
    printf '[Desktop Entry]\nType=Application\nName=Hello\nExec=%s/bin/hello %%U\nIcon=%s/share/icon.png\n' \
      ${scripts} $out > $out/share/applications/hello.desktop
    printf 'datadir = %s/share\n' $out > $out/etc/foo.conf
    cat ${incConf} >> $out/etc/foo.conf
  '' { outputs = [ "out" "dev" "lib" ]; };

  # Read during evaluation: what the retargeted store holds decides the
  # derivation a Nix at the new store dir computes.
  producer = mk "producer" ''
    mkdir -p $out/share
    echo data > $out/share/data
    printf '%s/share/data' $out > $out/where
    printf '{ greeting = "hello from %s"; tool = "%s/bin/hello"; }\n' $out ${scripts} > $out/value.nix
  '' {};
  readFileConsumer = mk "read-file-consumer" ''
    printf '%s\n' "$fromProducer" > $out
  '' { fromProducer = builtins.readFile "${producer}/where"; };
  imported = import "${producer}/value.nix";
  importConsumer = mk "import-consumer" ''
    mkdir -p $out
    printf '%s\n%s\n' "$greeting" "$tool" > $out/imported
  '' { inherit (imported) greeting tool; };

  # passAsFile.
  passed = mk "pass-as-file" ''
    cp "$contentPath" $out
  '' { passAsFile = [ "content" ]; content = "tool: ${scripts}/bin/hello\nconf: ${incConf}\n"; };

  # A script with a binary payload appended (offsets into it matter).
  selfExtracting = mk "self-extracting" ''
    mkdir -p $out/bin
    { printf '#!/bin/sh\n# unpacks into %s\ntail -c +90 "$0" | gzip -dc\nexit 0\n' $out
      printf '\037\213\010\000\000\000\000\000\000\003 payload for %s/bin/unpack \000\001\002' $out
    } > $out/bin/unpack
    chmod +x $out/bin/unpack
  '' {};

  # UTF-16 text with a byte order mark: its store dir is not ASCII bytes.
  utf16 = mk "utf16" ''
    mkdir -p $out/share
    printf '\377\376' > $out/share/notes.txt
    printf 'installed in %s\r\n' $out | iconv -f UTF-8 -t UTF-16LE >> $out/share/notes.txt
    printf 'plain notes for %s\n' $out > $out/share/readme.txt
  '' {};

  # NUL-separated store paths (a binary by the text rule).
  nulSeparated = mk "nul-separated" ''
    mkdir -p $out/share
    printf '%s/share/a\000%s/share/b\000' $out $out > $out/share/list0
  '' {};

  # A large text file (over the planner's 16 MiB TEXT_LIMIT) that is the
  # whole output, with store paths on every line.
  large = mk "large.txt" ''
    seq 1 100000 | sed "s|.*|line & of $out, run by ${interp}/bin/run|" > $out
  '' {};

  # Fixed outputs: flat sha256, sha1 and md5; recursive sha256 and sha1.
  fixedSha256 = fixed "fixed-sha256.txt" "printf 'fixed content\\n' > $out" "flat" "sha256"
    "adcf791ae2803c0c10f0dab9c430c39ac580bf95d6a834a248f4dedd72c69665";
  fixedSha1 = fixed "fixed-sha1.txt" "printf 'sha1 content\\n' > $out" "flat" "sha1"
    "4d7d749a1818e3ffc20ea1afe330b5d1f722e75d";
  fixedMd5 = fixed "fixed-md5.txt" "printf 'md5 content\\n' > $out" "flat" "md5"
    "1a759327e26768c9f7f4cf4ddab64a1a";
  fixedRecursive = fixed "fixed-recursive" "mkdir $out; printf 'recursive\\n' > $out/hello"
    "recursive" "sha256" "24c584c084b39f3dd3ea53bc97e34ff39516e5b47a5db8f19e7f94966df73e74";
  fixedRecursiveSha1 = fixed "fixed-recursive-sha1" "printf 'recursive sha1\\n' > $out"
    "recursive" "sha1" "0dd87b4c962224ed2f0d0f55dd2654607c5a788a";

  # Everything together: a text-only path referring to all of the above, the
  # one root of the closure.
  everything = mk "everything" ''
    mkdir -p $out
    for p in ${fixedSha256} ${fixedSha1} ${fixedMd5} ${fixedRecursive} ${fixedRecursiveSha1} \
             ${filtered} ${selfExtracting} ${utf16} ${nulSeparated} ${large} ${passed} \
             ${libfoo} ${libfoo.dev} ${libfoo.lib} ${readFileConsumer} ${importConsumer}; do
      echo "$p" >> $out/inputs
    done
  '' {};
in {
  inherit interp scripts libfoo producer readFileConsumer importConsumer passed selfExtracting
    utf16 nulSeparated large everything;
  libfooDev = libfoo.dev;
  libfooLib = libfoo.lib;
}
