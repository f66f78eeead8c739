"""Sample models for reproducing Tian et al., CVPR 2021 (selective encryption of CNNs).

* :mod:`samples.paper.vgg19` – VGG19 (CIFAR variant, no BN) trained on MNIST padded to
  3x32x32, a stand-in for CIFAR-10, which cannot be downloaded offline here. MNIST is
  easier and more redundant than CIFAR-10, so accuracies are not comparable to the paper's.
* :mod:`samples.paper.dncnn` – DnCNN denoisers (sigma 25 and 50) trained on photographs
  shipped with scikit-image / scikit-learn.
* :mod:`samples.paper.train_all` – trains (or loads cached) everything: one command.
* :mod:`samples.paper.attacks` – fine-tuning attack and statistical detection of
  encrypted kernels, run on the ONNX files written by ``onnx_selenc.encrypt``.
* :mod:`samples.paper.reproduce` – the paper's tables and plots (accuracy against the
  fraction encrypted for VGG19, PSNR/SSIM per level for DnCNN) through ``onnx_selenc``:
  ``python -m samples.paper.reproduce``.

Training needs the ``samples`` extra (a pinned CPU ``torch``); everything downstream of
training reads the exported ONNX files with ONNX Runtime.
"""
