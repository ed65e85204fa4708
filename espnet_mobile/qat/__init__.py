"""Quantization-aware fine-tuning for one backend, from labelled data or from the fp32 model alone.

    python -m espnet_mobile.qat --model ID --backend {xnnpack,coreml,tflite} --data SPEC
        [--steps N | --epochs N] [--fp32-steps N] [--batch-size B] [--lr LR] [--out DIR]
        [--resume] [--seed S] [--weights PATH] [--input-size HxW] [--eval-every K]
        [--checkpoint-every N] [--artifact-eval {all,final,none}] [--threads T] [--max-trained-gain G]

    torchrun --nproc_per_node=2 -m espnet_mobile.qat ...      # DDP: gloo on CPU, NCCL on GPUs

``SPEC``: ``synthetic[:N]`` (default; N held-out scenes), ``cityscapes:DIR``,
``voc:DIR``, ``camvid:DIR``, or ``distill:DIR`` (any folder of photos; the fp32
model is the teacher). The deployable graph is captured in training mode and
prepared with ``prepare_qat_pt2e`` and the backend's own quantizer
(:mod:`espnet_mobile.qat.graph`); the checkpoint converts with
``python -m espnet_mobile.convert --qat-checkpoint OUT/checkpoint.pt --target
<executorch|coreml|tflite> --precision int8`` and no calibration.

Schedule: an optional fp32 fine-tuning phase (``--fp32-steps``; default: as many
steps as QAT for ``synthetic``, whose classes the checkpoints never saw, else
none), then QAT. QAT starts from the activation ranges post-training
quantization would choose (histogram search on the calibration inputs) and by
default keeps them, and the weights' ranges, fixed (``--observer-freeze 0``);
BatchNorm statistics stay frozen (``--bn-freeze F`` updates them for that share
of the steps). Adam (QAT learning rate 1e-4 on whole frames with a dataset's own
labels and for ``distill:``; 3e-4 on zoomed crops for ``synthetic``, where QAT
also goes on learning the task), cosine learning-rate decay; the weights of
layers whose gain exceeds ``--max-trained-gain`` (BatchNorms with collapsed variance, see
``qat_graph.high_gain_parameters``) are not trained (their BatchNorm
statistics still update while BatchNorm trains).

Scores: mIoU over the classes present in the held-out labels and pixel
accuracy (:func:`espnet_mobile.qat.evaluate.scores`); ``*_miou_all`` in
``metrics.json`` also averages classes that are only predicted, and
``class_iou`` gives fp32, PTQ and QAT IoU class by class. For ``distill:``,
``class_coverage`` counts the teacher's confident pixels per class on the
training photos (cut into the held-out views) and the held-out crops, and the run warns about held-out
classes no training photo shows: QAT cannot learn to keep them.

Loss: cross-entropy on labels (255 ignored); for ``distill:`` cross-entropy on
the teacher's argmax plus KL divergence on temperature-softened logits (T=2).
Augmentation: random scale, crop and horizontal flip (:mod:`espnet_mobile.qat.data`).

Results in ``--out`` (default ``qat_runs/<model>_<backend>_<data kind>``):
``checkpoint.pt`` (written atomically every ``--checkpoint-every`` steps and at
the end), ``metrics.json``, ``fp32_finetuned.pth`` after an fp32 phase (the
reference weights, for ``convert --weights``), and the int8 artifacts scored.
"""


def main(argv: list[str] | None = None) -> int:
    """The command, ``python -m espnet_mobile.qat`` (see ``__main__.py``)."""
    from espnet_mobile.qat.__main__ import main as command

    return command(argv)
