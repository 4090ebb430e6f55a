# Sourced by the .ci scripts: run from the repository root, a temporary
# directory removed on exit (KEEP_TMP=1 keeps it), and a clean copy of the
# working tree: tracked and untracked-but-not-ignored files only, so no in-place
# build products (.so, generated .c, build/) leak into it.

# require_repo_root SCRIPT_NAME
require_repo_root() {
    if [[ ! -f pyproject.toml || ! -d fastrnn ]]; then
        echo "$1: run me from the repository root" >&2
        exit 2
    fi
}

# make_tmp NAME: sets $tmp to a new directory, removed when the script exits
make_tmp() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/fastrnn-$1.XXXXXX")
    _tmp_owner=$1
    trap _remove_tmp EXIT
}

_remove_tmp() {
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "$_tmp_owner: kept $tmp"
    else
        rm -rf "$tmp"
    fi
}

# copy_clean_tree DEST: the working tree's source files into the new folder DEST
copy_clean_tree() {
    mkdir "$1"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
            | xargs -0 cp --parents -t "$1"
    else
        cp -r . "$1"
    fi
}
