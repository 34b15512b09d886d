"""Data-free image synthesis: NaturalInversion (Kim et al., AAAI 2022) and DeepInversion (Yin et al.,
CVPR 2020), judged by knowledge distillation. Plain PyTorch.

    from gsplat_kit.synth import synthesize
    from gsplat_kit.synth.distill import distill
    synthesize("data/teachers/resnet20_cifar10.pt", "natural", 256, "out/ni")
    distill("out/ni", "data/teachers/resnet20_cifar10.pt", "resnet20")["student_test_accuracy"]

(`distill` stays in its module: a package attribute of that name would shadow the submodule.)
"""


def synthesize(*args, **kwargs):
    """See gsplat_kit.synth.runner.synthesize."""
    from .runner import synthesize as f

    return f(*args, **kwargs)
