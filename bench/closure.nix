# The benchmark closure: the build machine's own files in store paths.
# `groups` is a JSON list of { name, sources } (absolute paths to copy);
# each group's path refers to the previous one (a chain of references).
{ system ? builtins.currentSystem, groups }:
let
  sh = import ../builder/nix/host-derivation.nix { inherit system; };
  build = prev: group: sh group.name (''
    mkdir -p $out/nix-support
    for src in ${builtins.concatStringsSep " " group.sources}; do
      cp -a "$src" $out/
    done
    chmod -R u+w $out
  '' + (if prev == null then "" else ''
    echo ${prev} > $out/nix-support/depends-on
  ''));
  chain = builtins.foldl'
    (acc: group: acc ++ [ (build (if acc == [ ] then null else builtins.elemAt acc (builtins.length acc - 1)) group) ])
    [ ]
    (builtins.fromJSON groups);
in
builtins.elemAt chain (builtins.length chain - 1)
