# Issue 15 on the lent GPU host: an `hpc-ppo bundle` made here, carried one part per call,
# installed offline there (the host takes at most 64 MiB of working tree per call).
#   here:  bash bench/gpu_host/bundle.sh stage BUNDLE_DIR     # -> .gpu-bundle/p1 ... pN (ignored)
#   there: mkdir -p ~/gb && cp .gpu-bundle/pK/* ~/gb/          # once per call, carry .gpu-bundle/pK
#   there: bash bench/gpu_host/bundle.sh install              # after the last part: ~/hpc-ppo-site
# Make the bundle with --split-mb 60, e.g. for the host's own freeze (first call: pip freeze):
#   hpc-ppo bundle -o /tmp/gpub --extras gpu --python 3.12 --platform manylinux_2_39_x86_64 \
#       --node-packages freeze.txt --split-mb 60
set -eu
case "$1" in
stage)
  src=$2; dst=.gpu-bundle
  grep -qx '/.gpu-bundle/' .git/info/exclude 2>/dev/null || echo /.gpu-bundle/ >> .git/info/exclude
  ls "$src"/wheels.tar.part-* >/dev/null 2>&1 || { echo "$src is not split: bundle with --split-mb 60" >&2; exit 2; }
  rm -rf $dst; i=1
  for part in "$src"/wheels.tar.part-*; do mkdir -p $dst/p$i; cp "$part" $dst/p$i/; i=$((i + 1)); done
  cp "$src"/install.sh "$src"/lock.txt "$src"/SHA256SUMS "$src"/parts.sha256 $dst/p1/
  du -sh $dst/p* | tr '\n' ' '; echo; echo "$((i - 1)) calls, one per part" ;;
install)
  t0=$(date +%s)
  cd ~/gb && PYTHON=python3 sh install.sh --target $HOME/hpc-ppo-site -q  # with .pyc, as a user's install: cold starts measure no byte-compiling
  touch $HOME/hpc-ppo-site/.done
  echo "install took $(( $(date +%s) - t0 )) s; $(ls ~/gb/wheels | wc -l) wheels, $(du -sh ~/gb/wheels | cut -f1)" ;;
*) echo "usage: $0 stage BUNDLE_DIR | install" >&2; exit 2 ;;
esac
