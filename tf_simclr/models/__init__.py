"""The SimCLRv2 model zoo: ResNet encoders, projection and supervised heads, SimCLRModel."""

from tf_simclr.models.heads import ProjectionHead, SupervisedHead
from tf_simclr.models.resnet import ResNet
from tf_simclr.models.simclr import SimCLRModel

__all__ = ["ProjectionHead", "ResNet", "SimCLRModel", "SupervisedHead"]
