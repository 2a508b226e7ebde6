# A self-contained Nix made from the build machine's own Nix binary
# (e.g. Debian's nix-bin): the binary and every shared library it loads are
# copied into store paths, one per library group, and patchelf points the
# interpreter and every RUNPATH into the store.  The RUNPATH strings are what
# makes Nix record the references between the groups.
#
# The lists of libraries are found on the build machine (the loader's
# --list) and passed in as space-separated absolute paths; see
# builder/samples.py.  A group may be empty: trixie's and sid's nix-bin link
# Nix's own libraries statically, so there is no Nix-libraries path then.
{ system ? builtins.currentSystem
, nixBinary            # e.g. /usr/bin/nix
, version              # e.g. 2.26.3 (the store path's name carries it)
, interpreter          # e.g. /lib64/ld-linux-x86-64.so.2
, glibcLibs            # libc and friends: copied as they are
, gccLibs              # libstdc++, libgcc_s
, otherLibs            # everything else the system provides
, nixLibs              # Nix's own libraries (/usr/lib/nix)
}:
let
  sh = import ./host-derivation.nix { inherit system; };

  # Copy libraries by the name they are asked for (their soname link),
  # dereferencing the host's symlinks; make them writable so patchelf can
  # edit them, then restore the read-only modes Nix canonicalises to anyway.
  copyLibs = libs: ''
    mkdir -p $out/lib
    for lib in ${libs} ; do
      cp -L "$lib" "$out/lib/$(basename "$lib")"
      chmod u+w "$out/lib/$(basename "$lib")"
    done
  '';

  glibc = sh "host-glibc" (copyLibs "${interpreter} ${glibcLibs}" + ''
    # libm, libresolv... find libc by its soname, already loaded by ld.so;
    # ld.so and libc themselves must not be edited.
    for lib in $out/lib/*; do
      [ -e "$lib" ] || continue  # an empty group
      case "$(basename "$lib")" in
        ld-linux*|libc.so.*) ;;
        *) patchelf --set-rpath $out/lib "$lib" ;;
      esac
    done
  '');

  gcc = sh "host-gcc-runtime" (copyLibs gccLibs + ''
    for lib in $out/lib/*; do [ -e "$lib" ] || continue; patchelf --set-rpath $out/lib:${glibc}/lib "$lib"; done
  '');

  deps = sh "host-nix-deps" (copyLibs otherLibs + ''
    for lib in $out/lib/*; do
      [ -e "$lib" ] || continue  # an empty group
      patchelf --set-rpath $out/lib:${gcc}/lib:${glibc}/lib "$lib"
    done
  '');

  nixlibs = sh "host-nix-libs" (copyLibs nixLibs + ''
    for lib in $out/lib/*; do
      [ -e "$lib" ] || continue  # an empty group
      patchelf --set-rpath $out/lib:${deps}/lib:${gcc}/lib:${glibc}/lib "$lib"
    done
  '');

  # Statically linked Nix libraries: no group, no store path, no RUNPATH entry.
  libGroups = (if nixLibs == "" then [ ] else [ nixlibs ]) ++ [ deps gcc glibc ];
  rpath = builtins.concatStringsSep ":" (map (p: "${p}/lib") libGroups);

  interpreterName = baseNameOf interpreter;
in
sh "nix-self-contained-${version}" ''
  mkdir -p $out/bin $out/libexec/nix
  cp -L ${nixBinary} $out/bin/nix
  chmod u+w $out/bin/nix
  patchelf --set-interpreter ${glibc}/lib/${interpreterName} \
    --set-rpath ${rpath} $out/bin/nix
  for tool in nix-build nix-channel nix-collect-garbage nix-copy-closure \
      nix-daemon nix-env nix-hash nix-instantiate nix-prefetch-url nix-shell nix-store; do
    ln -s nix $out/bin/$tool
  done
  ln -s ../../bin/nix $out/libexec/nix/build-remote
  # Prove it before Nix registers it: the copied Nix runs from the store alone.
  $out/bin/nix-store --version > /dev/null
''
