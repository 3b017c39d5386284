"""The publish stage: model card, Hugging Face upload, recipe import/diff.

Public names are re-exported lazily by their modules' users; import from the submodules:
``quantforge.publish.card`` (``CardData``, ``render_card``, ``card_from_source``),
``quantforge.publish.upload`` (``publish``, ``make_card``, ``UploadPlan``, ``build_plan``,
``execute``), ``quantforge.publish.importer`` (``import_recipe``, ``diff_quants``) and
``quantforge.publish.dialects`` (``import_dialect``, ``export_dialect``).
"""

from __future__ import annotations
