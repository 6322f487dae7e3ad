from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adadelta import Adadelta
from .adamax import Adamax
from .asgd import ASGD
from .base import Optimizer
from .lion import Lion
from .muon import Muon
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSProp, RMSprop
from .rprop import Rprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "RMSprop", "RMSProp", "Adam", "AdamW", "Adagrad", "Adamax",
           "RAdam", "NAdam", "Adadelta", "Rprop", "ASGD", "Lion", "Adafactor", "Muon"]
