#!/usr/bin/env bash
# Fetch the two airbench contenders of bench/compare.py into bench/external/ (git-ignored: it is
# someone else's code, never committed; it travels to a GPU machine in the run's `carry`):
#   - airbench94_muon.py, Keller Jordan's record script, from a git copy of
#     github.com/KellerJordan/cifar10-airbench (GIT_DIR: a clone's .git or a bare mirror, e.g.
#     what the session's `fetch` tool returns; default below), at COMMIT (default: its HEAD);
#   - the `airbench` package (train94) as PyPI's 0.1.8 sdist, the version of the earlier H200
#     figures, through pip; without PyPI, the same repository's airbench/ folder (0.1.9).
# bench/external/COMMIT records the record script's commit (the table names it).
#
#   bench/get_airbench.sh [GIT_DIR] [COMMIT]
set -euo pipefail
git_dir=${1:-/work/.mirror/KellerJordan+cifar10-airbench/repo}
cd "$(dirname "$0")"
mkdir -p external
if [[ ! -e "$git_dir" ]]; then
  echo "no git copy at $git_dir: clone https://github.com/KellerJordan/cifar10-airbench" \
    "(or use the fetch tool) and pass its .git folder" >&2
  exit 2
fi
commit=$(git --git-dir="$git_dir" rev-parse "${2:-HEAD}")
git --git-dir="$git_dir" show "$commit:airbench94_muon.py" > external/airbench94_muon.py
echo "$commit airbench94_muon.py from github.com/KellerJordan/cifar10-airbench" > external/COMMIT
rm -rf external/airbench
sdist=$(mktemp -d)
if python3 -m pip download --quiet --no-deps --no-binary :all: airbench==0.1.8 -d "$sdist"; then
  tar -xzf "$sdist"/airbench-0.1.8.tar.gz -C "$sdist"
  cp -r "$sdist"/airbench-0.1.8/airbench external/airbench
  echo "airbench 0.1.8 (PyPI sdist)" >> external/COMMIT
else
  git --git-dir="$git_dir" archive "$commit" airbench | tar -x -C external
  echo "airbench package from $commit (0.1.9; PyPI unreachable)" >> external/COMMIT
fi
rm -rf "$sdist"
cat external/COMMIT
ls -l external external/airbench
