"""Figures of the notebooks and the demo (matplotlib, PNG-friendly), one module per subject.

* :mod:`~bgtutorial.plots.images`: images and classes (``to_display``, ``image_grid``, ``class_balance``, ``class_name``).
* :mod:`~bgtutorial.plots.curves`: a run's training curves (``plot_history``, ``compare_histories``, ``loss_batch_note``).
* :mod:`~bgtutorial.plots.retrieval`: neighbours and projections (``retrieval_gallery``, ``embedding_projection(s)``).
* :mod:`~bgtutorial.plots.attention`: inside a batch (``attention_heatmap``, ``head_graphs``, ``coupling_maps``,
  ``batch_attention``, ``directed_graph``, ``class_circle_layout``).
* :mod:`~bgtutorial.plots.diagrams`: the methods as boxes and arrows (``two_stream_diagram``).
* :mod:`~bgtutorial.plots.hyperbolic`: the Poincaré ball (``poincare_figure``).
* :mod:`~bgtutorial.plots.studies`: results over seeds and settings (``seed_spread``, ``robustness_curves``,
  ``ablation_plot``, ``paired_differences``).

Import a figure from its module (``from bgtutorial.plots.curves import plot_history``).
"""
