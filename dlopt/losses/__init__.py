"""Losses at optax's path (``dlopt.losses.X`` == ``optax.losses.X``), numerically careful.

One family per module: regression, classification (softmax cross-entropy), sigmoid,
margin, divergence, ctc, dice (segmentation), ranking, self_supervised, sparsemax,
fenchel_young, smoothing. Each function returns the unreduced loss unless its docstring
says otherwise.
"""

from dlopt.losses.classification import poly_loss_cross_entropy as poly_loss_cross_entropy
from dlopt.losses.classification import safe_softmax_cross_entropy as safe_softmax_cross_entropy
from dlopt.losses.classification import softmax_cross_entropy as softmax_cross_entropy
from dlopt.losses.classification import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from dlopt.losses.ctc import ctc_loss as ctc_loss
from dlopt.losses.ctc import ctc_loss_with_forward_probs as ctc_loss_with_forward_probs
from dlopt.losses.dice import binary_dice_loss as binary_dice_loss
from dlopt.losses.dice import dice_loss as dice_loss
from dlopt.losses.dice import multiclass_generalized_dice_loss as multiclass_generalized_dice_loss
from dlopt.losses.divergence import convex_kl_divergence as convex_kl_divergence
from dlopt.losses.divergence import generalized_kl_divergence as generalized_kl_divergence
from dlopt.losses.divergence import kl_divergence as kl_divergence
from dlopt.losses.divergence import kl_divergence_with_log_targets as kl_divergence_with_log_targets
from dlopt.losses.fenchel_young import make_fenchel_young_loss as make_fenchel_young_loss
from dlopt.losses.margin import hinge_loss as hinge_loss
from dlopt.losses.margin import multiclass_hinge_loss as multiclass_hinge_loss
from dlopt.losses.margin import multiclass_perceptron_loss as multiclass_perceptron_loss
from dlopt.losses.margin import perceptron_loss as perceptron_loss
from dlopt.losses.ranking import ranking_softmax_loss as ranking_softmax_loss
from dlopt.losses.regression import cosine_distance as cosine_distance
from dlopt.losses.regression import cosine_similarity as cosine_similarity
from dlopt.losses.regression import huber_loss as huber_loss
from dlopt.losses.regression import l2_loss as l2_loss
from dlopt.losses.regression import log_cosh as log_cosh
from dlopt.losses.regression import squared_error as squared_error
from dlopt.losses.self_supervised import ntxent as ntxent
from dlopt.losses.self_supervised import triplet_margin_loss as triplet_margin_loss
from dlopt.losses.sigmoid import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from dlopt.losses.sigmoid import sigmoid_focal_loss as sigmoid_focal_loss
from dlopt.losses.smoothing import smooth_labels as smooth_labels
from dlopt.losses.sparsemax import multiclass_sparsemax_loss as multiclass_sparsemax_loss
from dlopt.losses.sparsemax import sparsemax_loss as sparsemax_loss
