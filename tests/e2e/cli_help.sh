#!/usr/bin/env bash
# Command-line quality, checked against the sources: `origami --help` names every subcommand
# main.cpp dispatches; every subcommand's --help runs and lists every flag its source declares
# (flags.add*("NAME", ...)) with its default and environment variable; an unknown flag is an error
# that suggests the closest one; ORIGAMI_<FLAG> is read.
#   cli_help.sh ORIGAMI SOURCE_DIR
set -u
origami=$1 src=$2
fail=0
bad() {
  echo "FAIL: $*"
  fail=1
}

# Subcommands and their flags, from the sources.
spec=$(python3 - "$src/launcher" <<'PY'
import glob, re, sys
for path in sorted(glob.glob(sys.argv[1] + "/*.cpp")):
    text = open(path).read()
    # Each Flags object, then the flags declared after it (until the next Flags object).
    for block in re.split(r"(?=\bFlags \w+\()", text)[1:]:
        name = re.match(r'Flags \w+\(\s*"([^"]+)"', block).group(1)
        flags = re.findall(r'\.add(?:_bool|_list)?\(\s*"([^"]+)"', block)
        if " " not in name:  # internal modes (launch --rank-wrapper) have no own --help line
            print(name, *flags)
PY
)
commands=$(grep -o -E 'cmd == "[a-z]+"' "$src/launcher/main.cpp" | grep -o -E '"[a-z]+"' | tr -d '"' |
           grep -v -x -E 'help')

top=$("$origami" --help) || bad "origami --help exited non-zero"
for c in $commands; do
  grep -q -E "^  $c " <<<"$top" || bad "origami --help does not list '$c'"
  grep -q -E "^$c( |$)" <<<"$spec" || bad "no Flags declaration found for '$c'"
done

while read -r cmd flags; do
  [ -n "$cmd" ] || continue
  help=$("$origami" "$cmd" --help 2>&1)
  rc=$?
  [ "$rc" -eq 0 ] || bad "origami $cmd --help exited $rc"
  grep -q "^usage: origami $cmd" <<<"$help" || bad "origami $cmd --help has no usage line"
  n=0
  for f in $flags; do
    line=$(grep -E -- "^  --$f( |$)" <<<"$help")
    if [ -z "$line" ]; then
      bad "origami $cmd --help does not list --$f"
      continue
    fi
    # The help text may wrap to the next line: look at the flag's line and the one after.
    block=$(grep -A1 -E -- "^  --$f( |$)" <<<"$help" | tr '\n' ' ')
    env=ORIGAMI_$(tr 'a-z-' 'A-Z_' <<<"$f")
    grep -q -E "\((default: [^)]*|repeatable)\)" <<<"$block" || bad "--$f of $cmd shows no default"
    grep -q -F "[env $env]" <<<"$block" || bad "--$f of $cmd does not name $env"
    n=$((n + 1))
  done
  echo "ok: origami $cmd --help lists its $n flags with defaults"
done <<<"$spec"

# Unknown flags: an error naming the closest valid flag.
check_suggest() {  # expected suggestion, command...
  local want=$1
  shift
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ] || ! grep -q -F "did you mean '--$want'?" <<<"$out"; then
    bad "$* -> exit $rc, no suggestion of --$want: $out"
  else
    echo "ok: $(tail -1 <<<"$out")"
  fi
}
check_suggest collective-timeout "$origami" train x.pbtxt --colective-timeout 5
check_suggest max-new-tokens "$origami" generate --max-new-token 5
check_suggest gemm-size "$origami" doctor --gem-size 5
check_suggest grace-s "$origami" launch --grace 3 -- doctor

# Environment variables: read when the flag is not given, the command line wins.
out=$(ORIGAMI_GEMM_SIZE=abc "$origami" doctor 2>&1)
[ $? -ne 0 ] && grep -q -F -- "--gemm-size: expected an integer, got 'abc'" <<<"$out" ||
  bad "ORIGAMI_GEMM_SIZE was not read: $out"
out=$(ORIGAMI_GEMM_SIZE=abc "$origami" doctor --gemm-size 0 --allreduce-mb 0 2>&1) ||
  bad "--gemm-size did not win over ORIGAMI_GEMM_SIZE: $out"
echo "ok: ORIGAMI_GEMM_SIZE is read and the flag wins over it"
exit $fail
