import pytest
import torch

from lightning_modules.classifier import LOSSES, OPTIMIZERS, ImageClassifier, classification_loss


@pytest.mark.parametrize("loss", LOSSES)
def test_losses_are_small_for_confident_correct_logits(loss):
    labels = torch.tensor([0, 3, 9])
    right = torch.nn.functional.one_hot(labels, 10).float() * 20
    wrong = torch.nn.functional.one_hot((labels + 1) % 10, 10).float() * 20

    assert classification_loss(loss, right, labels) < 1e-3
    assert classification_loss(loss, wrong, labels) > 0.1


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_takes_a_step(optimizer):
    model = ImageClassifier(optimizer=optimizer, lr=0.01, momentum=0.9)
    opt = model.configure_optimizers()
    before = model.net.output.weight.detach().clone()

    loss = classification_loss("cross_entropy", model(torch.rand(4, 1, 28, 28)),
                               torch.tensor([1, 2, 3, 4]))
    loss.backward()
    opt.step()

    assert type(opt).__name__.lower() == optimizer
    assert not torch.equal(before, model.net.output.weight)


def test_hyperparameters_rebuild_the_network():
    model = ImageClassifier(network={"activation": "relu", "dense_units": (32,)}, lr=0.2)
    rebuilt = ImageClassifier(**model.hparams)

    assert rebuilt.hparams["lr"] == 0.2
    assert str(rebuilt.net) == str(model.net)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"optimizer": "lbfgs"}, "unknown optimizer"), ({"loss": "dice"}, "unknown loss"),
     ({"lr": 0}, "lr must be positive")],
    ids=["optimizer", "loss", "lr"],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(**kwargs)
