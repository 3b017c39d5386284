"""The publish stage: model card, Hugging Face upload, recipe import/diff.

Public names are re-exported lazily by their modules' users; import from the submodules:
``quantforge.publish.card`` (``CardData``, ``render_card``), ``quantforge.publish.upload``
(``UploadPlan``, ``build_plan``, ``execute``), ``quantforge.publish.importer``
(``import_recipe``, ``diff_quants``) and ``quantforge.publish.publish`` (``publish``).
"""

from __future__ import annotations
