"""Trained models, loaded once per server process and shared by every session.

A model that is missing (nothing trained yet), corrupt or not installed gives the page a message
in words, never a traceback, and the other pages keep working.
"""

from __future__ import annotations

import streamlit as st

from bloodcells.settings import settings

NOT_TRAINED_HINT = {
    "classifier": "Train one on the Training page, or with `bloodcells train --data FOLDER --out DIR` and "
                  "`bloodcells versions promote DIR`.",
    "detector": "Train one with `bloodcells train-detector --data FOLDER`.",
}


# Keyed by the folder of the tree in use, read from its version pointer on every page run: a version put
# in use from the command line (`bloodcells versions`) while the app runs reaches every page at once
# (keyed by the models folder alone, the app went on with the tree it had loaded until restarted).
# Three entries: the tree in use, the one before it (for the sessions still running on it), and one an older
# analysis was made by (the Explanation page explains its cells with it).
@st.cache_resource(show_spinner="Loading the classifier tree…", max_entries=3)
def _classifier(tree_dir: str):
    from bloodcells.classify import TreeClassifier

    return TreeClassifier.load(tree_dir)


def _tree_in_use() -> str:
    from bloodcells.classify import default_models_dir

    return str(default_models_dir())


@st.cache_resource(show_spinner="Loading the detector…")
def _detector(models_dir: str):
    from bloodcells.detection import Detector

    return Detector.load()  # the settings' models dir; the argument keys the cache


def _models_dir() -> str:
    return str(settings().models_dir)


# what each kind is loaded by, and what keys its cache
_LOADERS = {"classifier": (_classifier, _tree_in_use), "detector": (_detector, _models_dir)}


def _load(kind: str):
    loader, key = _LOADERS[kind]
    try:
        return loader(key()), None
    except ImportError as error:
        return None, f"The {kind} is not part of this installation yet ({error})."
    except (OSError, ValueError, RuntimeError, KeyError) as error:  # ModelFileError and friends
        return None, f"No {kind} is available: {error}"


def get_classifier(required: bool = True):
    """The classifier tree, or None. When ``required``, a missing one stops the page with a message."""
    classifier, problem = _load("classifier")
    if problem and required:
        st.warning(problem)
        st.info(NOT_TRAINED_HINT["classifier"])
        st.stop()
    return classifier


def classifier_of(folder) -> object:
    """The classifier tree in ``folder`` (a version an analysis was made by), loaded once per server process."""
    return _classifier(str(folder))


def get_detector(required: bool = True):
    """The detector, or None. When ``required``, a missing one stops the page with a message."""
    detector, problem = _load("detector")
    if problem and required:
        st.warning(problem)
        st.info(NOT_TRAINED_HINT["detector"])
        st.stop()
    return detector


def model_problem(kind: str) -> str | None:
    """Why the classifier or detector cannot be used, or None when it loads."""
    return _load(kind)[1]


def reload_models() -> None:
    """Forget the loaded models so that the next page run loads the newly accepted ones."""
    _classifier.clear()
    _detector.clear()


def predicted_attributes(image, classifier) -> tuple[dict[str, str], str]:
    """The cell's morphology attributes and the sentence they make, or ({}, why there are none)."""
    try:
        from bloodcells.morphology import AttributeHeadError, AttributesForOtherModels, describe, predict_attributes
    except ImportError as error:
        return {}, f"the morphology model is not part of this installation yet ({error})"
    try:
        attributes = predict_attributes(image, classifier)
    except AttributesForOtherModels:  # its file's path and sha256 said nothing to a lab
        return {}, (f"the morphology model was trained with other models than version {classifier.tree_version} "
                    "of the classifier; ask whoever runs the server to retrain it for this version "
                    "(`make models-attributes`)")
    except AttributeHeadError as error:
        return {}, str(error)
    return attributes, describe(attributes)
