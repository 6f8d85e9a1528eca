"""The paper's experiments, built on :mod:`milsil.engine`.

* :mod:`~milsil.experiments.ablation` -- Table 1: BagNet, MILBagNet and the proposed model
  on the same patient-level folds;
* :mod:`~milsil.experiments.localization` -- logit heatmap, CAM and Grad-CAM against the
  malignant-nuclei masks;
* :mod:`~milsil.experiments.reproduce` -- the whole protocol on CRC, CAMELYON16 or
  synthetic data, printed as Tables 1 and 2;
* :mod:`~milsil.experiments.public` -- the CRC and CAMELYON16 adapters ``reproduce`` reads
  them through (here, not in :mod:`milsil.data`, because CAMELYON16 is read with
  :mod:`milsil.wsi`, which sits above data).
"""
