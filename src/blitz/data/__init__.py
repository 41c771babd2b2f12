"""From a source spec to tensors: sources, files, decoding, sets, augmentation."""
