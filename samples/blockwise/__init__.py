"""Block-wise encryption sample: ConvMixer and a small ViT on MNIST padded to 3x32x32."""
