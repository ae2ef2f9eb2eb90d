"""Plans: YAML in, a validated, frozen, typed :class:`~bcdr.plan.model.Plan` out.

``source`` reads the YAML with positions, ``schema`` checks it against the dataclasses of
``model`` (the single source of validation, reference docs and sample plans), ``checks``
applies the rules that span fields, and ``loader.load_plan`` ties them together. Nothing
below this package sees raw YAML or dicts.
"""
