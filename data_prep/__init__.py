"""Dataset preparation: converters from the published layouts into the standard layout
(``mvtec``, ``visa``, ``mvtec3d``, ``realiad``, ``btad``, ``mvtec_loco``, ``mvtec_ad2``,
``mpdd``, ``folder``; shared code in ``common``), the offline synthetic benchmark
(``synthetic``), the whole-dataset checker (``validate``) and the docs figure
(``figures``). Each is runnable as ``python -m data_prep.<module> --help``; see
``book/datasets.md``.
"""
