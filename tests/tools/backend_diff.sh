#!/bin/sh
# The differential test of dicom.h's two backends (tests/tools/backend_diff.c)
# over a varied corpus: gendicom.py in every transfer syntax and character
# set, bench/make_corpus.py's 64x64 files (sequences, private tags, Latin-1),
# the fuzz corpus and regression inputs of fuzz_backend, and pydicom's own
# test files when the package ships them.
# Usage: backend_diff.sh BACKEND_DIFF_BINARY WORK_DIR
set -eu
tool=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work"
mkdir -p "$work"
/usr/bin/python3 "$here/gendicom.py" --out "$work/gen" --patients 6 --studies 1 \
	--series 2 --images 2 --rows 8 --cols 8 --transfer-syntax mixed >/dev/null
/usr/bin/python3 "$here/gendicom.py" --out "$work/gen-le" --patients 6 --studies 1 \
	--series 1 --images 2 --rows 8 --cols 8 --seed 7 >/dev/null
/usr/bin/python3 "$here/../../bench/make_corpus.py" --out "$work/bench" --files 40 \
	--patients 4 >/dev/null
set -- "$work" "$here/../../fuzz/corpus/backend" "$here/../../fuzz/regressions/backend"
pydicom_data=/usr/lib/python3/dist-packages/pydicom/data/test_files
[ -d "$pydicom_data" ] && set -- "$@" "$pydicom_data"
# The generated explicit little endian files are all the C backend's.
exec "$tool" --min-claimed 60 "$@"
