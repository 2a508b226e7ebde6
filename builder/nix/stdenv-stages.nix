# Every stdenv bootstrap stage of a nixpkgs package set, final stage first.
#
# nixpkgs' booter (pkgs/stdenv/booter.nix) gives each stage's stdenv the
# package set it was built from as `__bootPackages`; the first, hand-made
# stage is marked `__raw = true`.  Shipping every stage's stdenv in the
# closure (as the Nix-Prefix experiment did) lets the installed Nix evaluate
# nixpkgs at the same store dir without rebuilding the bootstrap.
#
# Plain Nix, no nixpkgs library: the function is tested on synthetic sets.
let
  stagesOf = stdenv:
    let
      boot = stdenv.__bootPackages or null;
      done = boot == null || (boot.__raw or false) || !(boot ? stdenv);
    in
    [ stdenv ] ++ (if done then [ ] else stagesOf boot.stdenv);
in
{ inherit stagesOf; }
