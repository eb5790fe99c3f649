# shellcheck shell=bash
# Shared by deploy/test-image.sh and deploy/local-image.sh (sourced; the caller defines `die`).
#
# libraries BINARY: "source<TAB>path in the image" lines for every shared library ldd lists for
# BINARY, at the same paths (the dynamic loader included: binaries name it by absolute path).
# Nothing for a static binary.
libraries() {
  local out line path
  if ! out=$(ldd "$1" 2>&1); then
    case $out in
      *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
      *) die "ldd $1 failed: $out" ;;
    esac
  fi
  case $out in *"statically linked"*) return 0 ;; esac
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
  # (0x...)", or "linux-vdso.so.1 (0x...)" (in the kernel, no file).
  while IFS= read -r line; do
    case $line in *"not found"*) die "ldd $1: $line" ;; esac
    if [[ $line == *"=>"* ]]; then
      path=$(awk -F'=>' '{ split($2, w, " "); print w[1] }' <<<"$line")
    else
      path=$(awk '{ print $1 }' <<<"$line")
    fi
    if [[ $path == /* ]]; then printf '%s\t%s\n' "$path" "$path"; fi
  done <<<"$out"
}
