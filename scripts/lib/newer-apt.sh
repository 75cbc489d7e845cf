# scripts/lib/newer-apt.sh - sourced by scripts/build-libssh and scripts/deps: apt on a
# private list of Debian's newer suites, for the few things Debian 12 has too old (libssh's
# source package, ssh-audit). Its own sources list, lists and cache under $1: the machine's
# apt configuration is not touched and nothing is installed from those suites. apt checks
# every download against the suite's signed index (debian-archive-keyring).
#
#   newer_apt_init DIR "forky sid"   then   apt-get "${NEWER_APT[@]}" ...
# The Debian mirror the machine's apt already uses for its own suite's main component.
newer_apt_mirror() {
  local m
  m=$(apt-cache policy 2>/dev/null |
      awk '$2 ~ /^(https?|file):/ && $3 ~ /^[a-z]+\/main$/ && $3 !~ /security/ { print $2; exit }')
  if [[ -z $m ]]; then   # no lists yet: read the sources themselves
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ && $2 !~ /security/ && $2 ~ /debian\/?$/ { print $2; exit }')
  fi
  if [[ -z $m ]]; then
    m=$(awk '$1 == "deb" && $2 !~ /security/ && $2 ~ /debian\/?$/ { print $2; exit }' \
        /etc/apt/sources.list 2>/dev/null)
  fi
  echo "${m%/}"
}

newer_apt_init() {
  local dir=$1 suites=$2 suite mirror
  mirror=$(newer_apt_mirror)
  if [[ -z $mirror ]]; then
    echo "newer-apt: no Debian mirror found in the machine's apt sources (apt-cache policy)" >&2
    return 1
  fi
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  : >"$dir/sources.list"
  for suite in $suites; do
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >>"$dir/sources.list"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >>"$dir/sources.list"
  done
  NEWER_APT=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$dir/lists" -o "Dir::State::status=/dev/null"
             -o "Dir::Cache=$dir" -o "Dir::Cache::archives=$dir/archives"
             -o APT::Sandbox::User=root -qq)
  apt-get "${NEWER_APT[@]}" update
}

# Every version of a source package in those suites, one a line.
newer_apt_versions() {
  apt-cache "${NEWER_APT[@]}" showsrc "$1" 2>/dev/null | awk '/^Version: / { print $2 }' | sort -u
}

# The newest of them whose version matches the regex $2.
newer_apt_newest() {
  local v newest=
  for v in $(newer_apt_versions "$1" | grep -E "$2"); do
    if [[ -z $newest ]] || dpkg --compare-versions "$v" gt "$newest"; then newest=$v; fi
  done
  echo "$newest"
}
