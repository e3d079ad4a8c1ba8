"""The values combinations the chart is rendered with: each GPU sharing mode, each autoscaler, each
model source, each optional feature. The render tests pick cases by name; schema validation and the
security scan use a covering set in which every option of every axis appears at least once (the full
product is 72 renderings and costs minutes of checkov on CI for no new object shape)."""

from __future__ import annotations

import itertools

from chart_helpers import merge

SHARING = {
    "exclusive": {"gpu": {"sharing": "exclusive"}},
    "time-slicing": {"gpu": {"sharing": "time-slicing", "replicasPerGpu": 4}},
    "mps": {"gpu": {"sharing": "mps", "replicasPerGpu": 2, "renameByDefault": True}},
    "mig": {"gpu": {"sharing": "mig", "migProfile": "3g.40gb"}},
    "multi-instance": {"gpu": {"sharing": "exclusive", "instancesPerPod": 3}},
    "cpu": {"gpu": {"sharing": "none"}, "engine": {"device": "cpu", "dtype": "float32"}},
}

AUTOSCALING = {
    "hpa": {"autoscaling": {"enabled": True, "kind": "hpa"}},
    "keda": {"autoscaling": {"enabled": True, "kind": "keda"}},
    "fixed": {"autoscaling": {"enabled": False}, "replicaCount": 2},
}

SOURCES = {
    "hub": {
        "model": {
            "source": "hub",
            "hub": {
                "id": "Qwen/Qwen2.5-72B-Instruct",
                "tokenSecret": {"name": "hf-token", "key": "token"},
                "cache": {"claimName": "hf-cache"},
            },
        }
    },
    "pvc": {"model": {"source": "pvc", "pvc": {"claimName": "qwen-weights", "subPath": "qwen2.5-7b"}}},
    "hostPath": {"model": {"source": "hostPath", "hostPath": {"path": "/data/qwen2.5-7b"}}},
    "initContainer": {"model": {"source": "initContainer"}},
}

# Optional features switched on together, so each is rendered and scanned at least once.
EXTRAS = {
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "tls": [{"secretName": "qwen-tls", "hosts": ["qwen.example.com"]}],
        }
    },
    "podMonitor": {"metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": False}}},
    "adminSecret": {"triton": {"restrictedApis": {"existingSecret": "triton-admin"}}},
}


def case(sharing: str, autoscaling: str, source: str, *extras: str) -> dict:
    return merge(SHARING[sharing], AUTOSCALING[autoscaling], SOURCES[source], *(EXTRAS[e] for e in extras))


def covering_matrix() -> dict[str, dict]:
    """One rendering per sharing mode; autoscalers, sources and extras cycled over them."""
    autoscalers = itertools.cycle(AUTOSCALING)
    sources = itertools.cycle(SOURCES)
    extras = itertools.cycle([("ingress",), ("podMonitor",), ("adminSecret",)])
    cases = {"defaults": {}}
    for sharing in SHARING:
        autoscaling, source, extra = next(autoscalers), next(sources), next(extras)
        cases[f"{sharing}/{autoscaling}/{source}/{'+'.join(extra)}"] = case(sharing, autoscaling, source, *extra)
    return cases
