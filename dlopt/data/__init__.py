"""Data: datasets (TFDS + an offline default), splits and scalers, batching, augmentation
(images; text on token and character ids, with a host-side vocabulary).

Importing this package is cheap (numpy, jax, chex); TFDS and scikit-learn load on first use.
"""

from dlopt.data.augment import compose as compose
from dlopt.data.augment import cutmix as cutmix
from dlopt.data.augment import cutout as cutout
from dlopt.data.augment import mixup as mixup
from dlopt.data.augment import random_brightness as random_brightness
from dlopt.data.augment import random_contrast as random_contrast
from dlopt.data.augment import random_crop as random_crop
from dlopt.data.augment import random_erasing as random_erasing
from dlopt.data.augment import random_flip as random_flip
from dlopt.data.augment import random_rotation as random_rotation
from dlopt.data.augment import random_translation as random_translation
from dlopt.data.augment import random_zoom as random_zoom
from dlopt.data.batching import batches as batches
from dlopt.data.batching import num_batches as num_batches
from dlopt.data.datasets import OFFLINE_DATASETS as OFFLINE_DATASETS
from dlopt.data.datasets import ArraySource as ArraySource
from dlopt.data.datasets import DatasetUnavailableError as DatasetUnavailableError
from dlopt.data.datasets import gather as gather
from dlopt.data.datasets import load as load
from dlopt.data.preprocess import MinMaxScaler as MinMaxScaler
from dlopt.data.preprocess import Standardizer as Standardizer
from dlopt.data.preprocess import channel_stats as channel_stats
from dlopt.data.preprocess import normalize_images as normalize_images
from dlopt.data.preprocess import resize as resize
from dlopt.data.preprocess import to_float as to_float
from dlopt.data.preprocess import to_grayscale as to_grayscale
from dlopt.data.preprocess import train_val_test_split as train_val_test_split
from dlopt.data.qwerty import qwerty_table as qwerty_table
from dlopt.data.text import contextual_substitute as contextual_substitute
from dlopt.data.text import random_word as random_word
from dlopt.data.text import spelling as spelling
from dlopt.data.text import table_substitute as table_substitute
from dlopt.data.typos import keyboard as keyboard
from dlopt.data.typos import random_char as random_char
from dlopt.data.vocab import Vocab as Vocab
from dlopt.data.vocab import candidate_table as candidate_table
from dlopt.data.vocab import decode_chars as decode_chars
from dlopt.data.vocab import encode_chars as encode_chars
