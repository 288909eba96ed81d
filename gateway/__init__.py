"""sagemaker-gateway: validates, strips, signs and forwards SageMaker runtime calls."""

__version__ = "0.1.0"
