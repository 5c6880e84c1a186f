"""Semi-supervised training of M2: the labelled subset, paired batches, the enumerated loss, accuracy."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from pyro_vae.data.batches import evaluation_batches, evaluation_split, fixed_binarization
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.enumeration import enumerated_negative_elbo
from pyro_vae.inference.objectives import RecordedTrace_ELBO, RecordedTraceMeanField_ELBO
from pyro_vae.runs.config import ConfigError, TrainConfig

# Statistics the loss keeps per step, summed over an epoch.
_LOSS, _UNSUPERVISED, _NUM_UNLABELLED, _SUPERVISED, _NUM_LABELLED, _CLASSIFICATION, _CORRECT = range(7)


def balanced_labelled_indices(labels: torch.Tensor, num_labels: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of ``num_labels`` training images, ``num_labels / num_classes`` of each class, seeded.

    Raises :class:`~pyro_vae.config.ConfigError` when the count does not divide evenly into the
    classes or a class has too few images.
    """
    if num_labels % num_classes:
        raise ConfigError(f"--labels {num_labels} does not split evenly into {num_classes} classes; "
                          f"use a multiple of {num_classes}")
    per_class = num_labels // num_classes
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < per_class:
            raise ConfigError(f"--labels {num_labels} asks for {per_class} images of class {label} but the "
                              f"training split has {len(members)}; use --labels <= {num_classes * len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


class SemiSupervisedBatches:
    """The steps of an epoch: batches of unlabelled images and of labelled images with their labels.

    An epoch is one pass over the unlabelled images. By default each step pairs an unlabelled batch
    with a labelled one, the (usually much smaller) labelled subset reshuffled whenever it is used
    up. With ``interleave`` the labelled subset is instead passed over once per epoch in steps of
    its own, spread evenly among the unlabelled steps (pyro-ppl's SS-VAE example); a step then has
    ``None`` for the part it lacks. Orders and dynamic binarization depend only on (seed, epoch).
    :attr:`labelled_scale` is the weight that makes an epoch's paired labelled terms add up to one
    pass over the labelled subset, as in Kingma et al.'s objective, however often each labelled
    image is drawn (``--labelled-weighting pass``; ``batch`` weighs every drawn image 1 instead).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor, batch_size: int,
                 binarize: str, seed: int, interleave: bool = False) -> None:
        labelled = labelled.to(images.device)
        is_labelled = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        is_labelled[labelled] = True
        self.dynamic = binarize == "dynamic"
        images = images if self.dynamic else fixed_binarization(images, binarize, seed)
        self.unlabelled_images = images[~is_labelled]
        self.labelled_images, self.labelled_labels = images[labelled], labels[labelled]
        if len(self.unlabelled_images) == 0:
            raise ConfigError(f"--labels {len(labelled)} labels every training image; leave some unlabelled")
        self.batch_size = batch_size
        self.labelled_batch_size = min(batch_size, len(labelled))
        self.seed = seed
        self.interleave = interleave
        self.unlabelled_steps = -(-len(self.unlabelled_images) // batch_size)
        self.labelled_steps = -(-len(labelled) // self.labelled_batch_size) if interleave else 0
        self.labelled_scale = len(labelled) / (self.unlabelled_steps * self.labelled_batch_size)

    def __len__(self) -> int:
        return self.unlabelled_steps + self.labelled_steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
        """Yield ``(unlabelled x, labelled x, labels)`` for every step of ``epoch``."""
        seed = self.seed * 1_000_003 + epoch
        order_generator = torch.Generator().manual_seed(seed)
        device = self.unlabelled_images.device
        pixel_generator = torch.Generator(device=device).manual_seed(seed) if self.dynamic else None
        binarized = (lambda x: torch.bernoulli(x, generator=pixel_generator)) if self.dynamic else (lambda x: x)
        order = torch.randperm(len(self.unlabelled_images), generator=order_generator).to(device)
        unlabelled_batches = order.split(self.batch_size)
        if self.interleave:
            labelled_batches = torch.randperm(len(self.labelled_images), generator=order_generator).to(device).split(
                self.labelled_batch_size)
            labelled_at = {(2 * j + 1) * len(self) // (2 * len(labelled_batches)) for j in range(len(labelled_batches))}
            unlabelled, labelled = iter(unlabelled_batches), iter(labelled_batches)
            for step in range(len(self)):
                if step in labelled_at:
                    index = next(labelled)
                    yield None, binarized(self.labelled_images[index]), self.labelled_labels[index]
                else:
                    yield binarized(self.unlabelled_images[next(unlabelled)]), None, None
            return
        labelled_order = torch.empty(0, dtype=torch.long, device=device)
        for unlabelled_index in unlabelled_batches:
            if len(labelled_order) < self.labelled_batch_size:
                fresh = torch.randperm(len(self.labelled_images), generator=order_generator).to(device)
                labelled_order = torch.cat([labelled_order, fresh])
            labelled_index, labelled_order = (labelled_order[: self.labelled_batch_size],
                                              labelled_order[self.labelled_batch_size :])
            x_unlabelled = binarized(self.unlabelled_images[unlabelled_index])
            x_labelled = binarized(self.labelled_images[labelled_index])
            yield x_unlabelled, x_labelled, self.labelled_labels[labelled_index]


def _count(images: torch.Tensor | None, zero: torch.Tensor) -> torch.Tensor:
    return zero if images is None else torch.full_like(zero, float(len(images)))


class SemiSupervisedLoss(nn.Module):
    """Kingma et al.'s M2 objective (2014, eq. 9) as a loss module, summed over a step's images:

    -ELBO(x_u) with y summed out exactly (:func:`~pyro_vae.inference.enumeration.enumerated_negative_elbo`)
    + labelled_scale * [-ELBO(x_l, y_l) + aux_weight * -log q(y_l|x_l)].

    ``forward(x_unlabelled, x_labelled, y_labelled)`` returns that sum; :meth:`last_statistics`
    the step's unweighted summed terms and counts, for per-epoch metrics without a host
    synchronisation. ``labelled_scale`` is 1 or :attr:`SemiSupervisedBatches.labelled_scale`;
    ``analytic_kl`` takes both ELBOs' KL terms in closed form where exact (``--objective meanfield``,
    see :mod:`pyro_vae.inference.closed_form_kl`).
    """

    def __init__(self, model: nn.Module, aux_weight: float, labelled_scale: float = 1.0,
                 analytic_kl: bool = False) -> None:
        super().__init__()
        self.model = model
        self.aux_weight = aux_weight
        self.labelled_scale = labelled_scale
        self.analytic_kl = analytic_kl
        self.elbo = RecordedTrace_ELBO(max_plate_nesting=1)  # Trace_ELBO's loss, computed without host reads
        self.labelled_elbo = RecordedTraceMeanField_ELBO(max_plate_nesting=1) if analytic_kl else self.elbo
        self._statistics = torch.zeros(7)

    def unsupervised_loss(self, x: torch.Tensor) -> torch.Tensor:
        """-ELBO of unlabelled images, the label summed out under q(y|x), summed over the batch."""
        return enumerated_negative_elbo(self.model.model, self.model.guide, x, analytic_kl=self.analytic_kl)

    def supervised_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-ELBO of labelled images (log p(x, y) bound), summed over the batch."""
        return self.labelled_elbo.differentiable_loss(self.model.model, self.model.guide, x, y)

    def classification_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-aux_weight * log q(y|x), summed over the batch."""
        return self.elbo.differentiable_loss(self.model.classifier_model, self.model.classifier_guide, x, y,
                                             self.aux_weight)

    def forward(self, x_unlabelled: torch.Tensor | None, x_labelled: torch.Tensor | None,
                y_labelled: torch.Tensor | None) -> torch.Tensor:
        """The step's summed loss; a step of one kind only (``None`` for the other part) has no terms of the other."""
        zero = next(self.model.parameters()).new_zeros(())
        unsupervised = zero if x_unlabelled is None else self.unsupervised_loss(x_unlabelled)
        supervised = zero if x_labelled is None else self.supervised_loss(x_labelled, y_labelled)
        classification = zero if x_labelled is None else self.classification_loss(x_labelled, y_labelled)
        loss = unsupervised + self.labelled_scale * (supervised + classification)
        with torch.no_grad():
            correct = (zero if x_labelled is None
                       else (self.model.predict(x_labelled) == y_labelled).sum().to(zero.dtype))
            self._statistics = torch.stack([
                loss.detach(), unsupervised.detach(), _count(x_unlabelled, zero), supervised.detach(),
                _count(x_labelled, zero), classification.detach(), correct,
            ])
        return loss

    @staticmethod
    def num_images(x_unlabelled: torch.Tensor | None, x_labelled: torch.Tensor | None,
                   y_labelled: torch.Tensor | None) -> int:
        """Images the loss is averaged over: the unlabelled ones (labelled terms are weighted into them), or the
        labelled ones of a labelled step of its own."""
        return len(x_labelled) if x_unlabelled is None else len(x_unlabelled)

    def last_statistics(self) -> torch.Tensor:
        return self._statistics

    @staticmethod
    def epoch_summary(totals: list[float]) -> dict[str, float]:
        """Per-image means of an epoch's summed statistics; ``loss`` is the weighted objective per unlabelled image."""
        num_unlabelled, num_labelled = totals[_NUM_UNLABELLED], totals[_NUM_LABELLED]
        return {
            "loss": totals[_LOSS] / num_unlabelled,
            "unsupervised": totals[_UNSUPERVISED] / num_unlabelled,
            "supervised": totals[_SUPERVISED] / num_labelled,
            "classification": totals[_CLASSIFICATION] / num_labelled,
            "labelled_accuracy": totals[_CORRECT] / num_labelled,
        }


@torch.no_grad()
def classification_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of images whose most probable class under q(y|x) is their label."""
    correct = sum(int((model.predict(x) == y).sum()) for x, y in evaluation_batches(images, labels, batch_size))
    return correct / len(images)


def semisupervised_scores(loss: SemiSupervisedLoss, images: torch.Tensor, labels: torch.Tensor,
                          batch_size: int = 1000) -> dict[str, float]:
    """Accuracy of q(y|x) and the mean unlabelled ELBO (y enumerated) per image, nats."""
    with torch.no_grad():
        total = sum(float(loss.unsupervised_loss(x)) for x, _ in evaluation_batches(images, labels, batch_size))
    return {"accuracy": classification_accuracy(loss.model, images, labels, batch_size),
            "elbo": -total / len(images)}


LABELLED_WEIGHTINGS = ("pass", "batch", "interleave")  # how labelled terms weigh (see SemiSupervisedBatches)


def check_semisupervised_settings(labels: int | None, aux_weight: float, labelled_weighting: str) -> None:
    """Raise a ValueError naming the first of an M2-like model's training settings that is invalid."""
    if labels is not None and (not isinstance(labels, int) or isinstance(labels, bool) or labels < 1):
        raise ValueError(f"labels must be an integer >= 1, got {labels!r}")
    if not aux_weight >= 0:
        raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
    if labelled_weighting not in LABELLED_WEIGHTINGS:
        raise ValueError(f"labelled_weighting {labelled_weighting!r} is not one of: {', '.join(LABELLED_WEIGHTINGS)}")


class SemiSupervisedPlan:
    """M2's training plan: each step a batch of unlabelled and one of labelled images, the enumerated
    loss, accuracy and the y-summed ELBO on validation and test, ``best.pt`` by validation accuracy.

    Args:
        model: an M2-like model with ``model``/``guide`` taking y optionally, ``classifier_model`` /
            ``classifier_guide`` for the auxiliary term, ``predict``, ``num_classes`` and its training
            settings as attributes: ``labels`` (size of the class-balanced labelled subset of the
            training split), ``aux_weight`` (weight of the classifier term log q(y|x) per labelled
            image) and ``labelled_weighting`` (``batch``: each drawn labelled image weighs as one
            unlabelled image; ``pass``: an epoch's labelled terms add up to one pass over the
            labelled subset; ``interleave``: one pass over the labelled subset per epoch in steps
            of their own, at full weight), see :func:`check_semisupervised_settings`.
        settings: the run's optimisation settings (the ELBO, closed-form KL optional: no IWAE, beta or warm-up).
        dataset: labelled training data.
        binarize: how training images are binarized.
    """

    selection_metric = "accuracy"
    scored_splits = ("valid", "test")

    def __init__(self, model: nn.Module, settings: TrainConfig, dataset: Dataset, binarize: str) -> None:
        name = type(model).__name__
        labels, aux_weight, labelled_weighting = model.labels, model.aux_weight, model.labelled_weighting
        if labels is None:
            raise ConfigError(f"{name} trains semi-supervised and needs labels=N, the number of labelled training "
                              "images (--labels N, e.g. 100)")
        if dataset.train_labels is None:
            raise ConfigError(f"{name} needs labelled data but {dataset.name} has no labels; use mnist, "
                              "fashion-mnist or mnist-sample")
        if settings.objective not in ("elbo", "meanfield"):
            raise ConfigError(f"{name} trains on the ELBO with the labels summed out: objective elbo or meanfield "
                              f"(closed-form KL where exact), got {settings.objective!r}")
        unsupported = {"gradient": (settings.gradient, "standard"),
                       "beta": (settings.beta, 1.0),
                       "kl_warmup_epochs": (settings.kl_warmup_epochs, 0), "num_particles": (settings.num_particles, 1)}
        for setting, (value, supported) in unsupported.items():
            if value != supported:
                raise ConfigError(f"{name} supports only {setting}={supported!r} (its loss is the single-sample ELBO with "
                                  f"the labels summed out), got {value!r}")
        self.model, self.settings, self.dataset, self.binarize = model, settings, dataset, binarize
        labelled = balanced_labelled_indices(dataset.train_labels, labels, model.num_classes, settings.seed)
        self.batches = SemiSupervisedBatches(dataset.train_images, dataset.train_labels, labelled,
                                             settings.batch_size, binarize, settings.seed,
                                             interleave=labelled_weighting == "interleave")
        labelled_scale = self.batches.labelled_scale if labelled_weighting == "pass" else 1.0
        self.loss_module = SemiSupervisedLoss(model, aux_weight, labelled_scale, settings.objective == "meanfield")

    def before_step(self, step: int, steps_per_epoch: int) -> None:
        """Nothing changes from step to step."""

    def score(self, split: str) -> dict[str, float]:
        """Accuracy of q(y|x) and the y-summed ELBO on ``split``, binarized once, seeded."""
        images, labels = evaluation_split(self.dataset, split, self.binarize, self.settings.seed)
        return semisupervised_scores(self.loss_module, images, labels, self.settings.eval_batch_size)

    @staticmethod
    def describe(record: dict) -> str:
        train, valid = record["train"], record["valid"]
        test = f"  test accuracy {100 * record['test']['accuracy']:.2f}%" if "test" in record else ""  # data may have none
        return (f"train loss {train['loss']:.2f} (unlabelled -ELBO {train['unsupervised']:.2f}, labelled -ELBO "
                f"{train['supervised']:.2f}, classifier {train['classification']:.2f})  valid -ELBO "
                f"{-valid['elbo']:.2f} accuracy {100 * valid['accuracy']:.2f}%{test}")
