# Nix built for a prefix of your choosing, with everything needed to ship it:
# the "Bootstrapping Nix" / Nix-Prefix recipe.
#
#   nix-build builder/nix/nix-for-prefix.nix --argstr prefix /opt/some/long/prefix/nix \
#     -A closure -o closure-info
#   nix-prefix build closure-info -o nix-installer.sh
#
# Run it on a machine with nixpkgs (channel or -I nixpkgs=...).  Choose a long
# prefix if the installer is to be retargeted to other prefixes
# (docs/retargeting.md): a retarget can only shorten the store dir.
{ nixpkgs ? <nixpkgs>
, pkgs ? import nixpkgs { }
, prefix ? "/tmp/nix"
, withStdenvStages ? true
}:
let
  nix = pkgs.nix.override {
    storeDir = "${prefix}/store";
    stateDir = "${prefix}/var";
    confDir = "${prefix}/etc";
  };
  stages = (import ./stdenv-stages.nix).stagesOf pkgs.stdenv;
  roots = [ nix ] ++ (if withStdenvStages then stages else [ ]);
in
{
  inherit nix stages;
  closure = pkgs.closureInfo { rootPaths = roots; };
}
