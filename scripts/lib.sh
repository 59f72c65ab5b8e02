# Shared by the image builds (sourced): a root file system for `docker import`, made from Debian's packages.

# copy_libs ROOT FILE: the shared libraries FILE links against, resolved against ROOT's own first, copied from
# this (same-release Debian) machine into ROOT unless ROOT has them already.
copy_libs() {
  local root=$1 file=$2
  _a_root "$root" || return 1
  LD_LIBRARY_PATH="$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu" ldd "$file" \
    | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
        case "$lib" in "$root"/*) continue ;; esac
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
      done
}

# base_etc ROOT [PASSWD_LINE GROUP_LINE]: root and nobody (and one more user, say nginx's www-data), a /tmp
# anyone may write, and name lookups that read /etc/hosts (glibc does only when nsswitch.conf says so).
base_etc() {
  local root=$1
  _a_root "$root" || return 1
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%snobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
    "${2:+$2$'\n'}" >"$root/etc/passwd"
  printf 'root:x:0:\n%snogroup:x:65534:\n' "${3:+$3$'\n'}" >"$root/etc/group"
  echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
}

# Never this machine's own /: a build's root is a folder of its own.
_a_root() {
  case "$1" in "" | / | //*) echo "refusing to write a root file system at '${1}'" >&2; return 1 ;; esac
}
