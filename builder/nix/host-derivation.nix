# A derivation built by the host's /bin/sh with the host's tools on PATH
# (sandbox off): the samples need no nixpkgs, only the machine's Nix.
{ system ? builtins.currentSystem }:
name: script: derivation {
  inherit name system;
  builder = "/bin/sh";
  args = [ "-ec" script ];
  PATH = "/usr/bin:/bin";
}
