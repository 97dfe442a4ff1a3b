#!/bin/sh
# Train on a mounted HAM10000-style dataset, export to ONNX, and publish the model directory
# where the service can mount it. Nothing is downloaded: data and weights are mounted paths.
#
# Environment (all optional; not DERMSERVE_* settings, those belong to the service):
#   DATA_DIR     dataset with labels.csv + images/          (default /data)
#   WEIGHTS      ImageNet MobileNetV2 0.5 no-top .h5 file   (default /weights/mobilenet_v2_..._no_top.h5)
#   RUNS_DIR     where trainer runs go                      (default /runs)
#   MODELS_DIR   where exported model directories go        (default /models)
#   RUN_NAME     name of this run and of the model dir      (default UTC timestamp)
#   MODEL_VERSION  version written into manifest.json       (default 1.0.0)
# Extra arguments are passed to `python -m trainer` (e.g. --finetune-epochs 3).
set -eu

DATA_DIR="${DATA_DIR:-/data}"
WEIGHTS="${WEIGHTS:-/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5}"
RUNS_DIR="${RUNS_DIR:-/runs}"
MODELS_DIR="${MODELS_DIR:-/models}"
RUN_NAME="${RUN_NAME:-$(date -u +%Y%m%dT%H%M%SZ)}"
MODEL_VERSION="${MODEL_VERSION:-1.0.0}"

die() { echo "trainer-entrypoint: $*" >&2; exit 2; }

[ -f "$DATA_DIR/labels.csv" ] || die "no $DATA_DIR/labels.csv: mount the dataset at $DATA_DIR"
[ -d "$DATA_DIR/images" ] || die "no $DATA_DIR/images/: mount the dataset at $DATA_DIR"
[ -f "$WEIGHTS" ] || die "no weights file $WEIGHTS: mount the weights directory at /weights"
case "$RUN_NAME" in
  */* | .* | "") die "RUN_NAME must be a plain directory name, got '$RUN_NAME'" ;;
esac
mkdir -p "$RUNS_DIR" "$MODELS_DIR"
[ -w "$MODELS_DIR" ] || die "$MODELS_DIR is not writable by uid $(id -u)"
final="$MODELS_DIR/$RUN_NAME"
[ ! -e "$final" ] || die "$final exists already; choose another RUN_NAME"

echo "trainer-entrypoint: training run $RUN_NAME"
python -m trainer --data-dir "$DATA_DIR" --weights "$WEIGHTS" --output-dir "$RUNS_DIR/$RUN_NAME" "$@"

# Export into a hidden partial directory, then rename: a service pointed at $final never sees
# a half-written model (rename is atomic within one filesystem).
partial="$MODELS_DIR/.$RUN_NAME.partial"
echo "trainer-entrypoint: exporting to $final"
python -m export "$RUNS_DIR/$RUN_NAME" --output "$partial" --data-dir "$DATA_DIR" \
    --version "$MODEL_VERSION" --force
mv "$partial" "$final"
echo "trainer-entrypoint: wrote $final (serve it with DERMSERVE_MODEL_DIR pointing at a read-only mount of it)"
