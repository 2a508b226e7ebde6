# A C program compiled with the build machine's gcc whose ELF interpreter
# and RUNPATH point into the store (glibc copied into its own store path),
# and which prints a path of another store path compiled into its data:
# after a retarget it must still start, load its libc from the new store
# and print the rewritten path.
{ system ? builtins.currentSystem
, interpreter          # e.g. /lib64/ld-linux-x86-64.so.2
, libc                 # e.g. /lib/x86_64-linux-gnu/libc.so.6
}:
let
  sh = import ./host-derivation.nix { inherit system; };

  glibc = sh "host-libc" ''
    mkdir -p $out/lib
    cp -L ${interpreter} $out/lib/${baseNameOf interpreter}
    cp -L ${libc} $out/lib/${baseNameOf libc}
  '';

  greeting = sh "c-greeting" ''
    mkdir -p $out/share
    printf 'hello from C\n' > $out/share/greeting
  '';
in
sh "hello-c" ''
  mkdir -p $out/bin
  cat > hello.c <<EOF
  #include <stdio.h>
  int main(void) {
      char line[64];
      FILE *f = fopen("${greeting}/share/greeting", "r");
      if (!f || !fgets(line, sizeof line, f)) { perror("${greeting}"); return 1; }
      fputs(line, stdout);
      printf("greeting read from ${greeting}\n");
      return 0;
  }
  EOF
  gcc -O1 -o $out/bin/hello-c hello.c
  patchelf --set-interpreter ${glibc}/lib/${baseNameOf interpreter} \
    --set-rpath ${glibc}/lib $out/bin/hello-c
  $out/bin/hello-c > /dev/null
''
