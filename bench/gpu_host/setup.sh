# Install the wheel bundle gathered in ~/vb (and the carried extra wheels) into ~/hpc-ppo-site.
set -e
if [ ! -f $HOME/hpc-ppo-site/.done ]; then
  t0=$(date +%s)
  cat ~/vb/part.* > /tmp/bundle.tar && tar xf /tmp/bundle.tar -C /tmp && rm -f /tmp/bundle.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --target $HOME/hpc-ppo-site /tmp/wheels/*.whl $(ls .devrun/*.whl 2>/dev/null) 2>&1 | grep -v "WARNING: Target directory" || true
  touch $HOME/hpc-ppo-site/.done
  echo "install took $(( $(date +%s) - t0 )) s"
fi
