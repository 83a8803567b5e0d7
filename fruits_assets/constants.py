"""Facts of the data and the model, without any dependency: Spark's Python workers import this
(and the other plain modules) without importing Dagster."""

SUPPORTED_IMAGE_SIZES = (96, 128, 160, 192, 224)
FEATURE_DIM = 1280  # MobileNetV2 alpha=1.0, avg-pooled
TRAIN_SPLIT = "Training"  # Fruits-360's own name for the training folder
SAMPLE_IMAGES = "sample"  # images_root value meaning: the generated synthetic sample
EU_REGION = "eu-west-1"  # the start-up's GDPR choice: data stays in Ireland
