"""FLUX.1 Kontext [dev]: a reference-image editing model as a family (`family.KONTEXT`).

The identity's conditioning photo is Kontext's input image; no adapter, no face embedding
reaches the model. See ``family.py`` for how the study's prompts are phrased as edits.
"""
