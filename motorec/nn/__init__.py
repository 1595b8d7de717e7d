"""Drop-in modules of motorec, each on top of :mod:`motorec.ops`.

* :class:`ResidualQuantizer` — residual VQ (k-means init, EMA option, dead-code re-seeding, usage stats);
  its parts: :func:`kmeans` (:mod:`motorec.nn.clustering`) and the codebook maintenance with
  :class:`StatisticsSync` (:mod:`motorec.nn.codebook`), set for a block by :func:`statistics_sync`.
* :class:`RQVAE` — MLP encoder + residual quantizer + decoder, with MoToRec's sparsity KL.
* :class:`LGConv`, :class:`LightGCN` — LightGCN propagation (PyG ``LGConv`` semantics).
* :func:`knn_graph`, :func:`attach_items` — blockwise cosine item-item kNN graphs, cold items attached.
"""
from motorec.nn.clustering import kmeans
from motorec.nn.codebook import StatisticsSync
from motorec.nn.knn import attach_items, knn_graph, knn_topk
from motorec.nn.lightgcn import LGConv, LightGCN, as_graph
from motorec.nn.quantizer import QuantizerLosses, ResidualQuantizer, statistics_sync
from motorec.nn.rqvae import RQVAE, RQVAELosses, RQVAEOutput, bernoulli_kl

__all__ = [
    "ResidualQuantizer", "QuantizerLosses", "kmeans", "StatisticsSync", "statistics_sync",
    "RQVAE", "RQVAEOutput", "RQVAELosses", "bernoulli_kl",
    "LGConv", "LightGCN", "as_graph",
    "knn_graph", "attach_items", "knn_topk",
]
