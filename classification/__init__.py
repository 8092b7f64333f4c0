"""Classification: ImageFolder data with the ImageNet class index, top-k evaluation, the small
classifier trainer and `eval.py bench`."""
