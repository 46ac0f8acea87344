"""JSON schemas of the KubeEdge ``devices.kubeedge.io/v1beta1`` Device and DeviceModel specs.

Written from the v1beta1 ``openAPIV3Schema`` of KubeEdge's CRDs (build/crds/devices/
devices_v1beta1_device.yaml and devices_v1beta1_devicemodel.yaml): the fields, their types and
enums. Unlike the API server, which prunes unknown fields silently, these refuse them, so
a misspelt field fails the test instead of vanishing on apply.
"""

from __future__ import annotations

from typing import Any

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT = {"type": "object"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                   "namespace": {"type": "string"}},
}


def _resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "devices.kubeedge.io/v1beta1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
            "status": _OBJECT,
        },
    }


DEVICE_MODEL = _resource("DeviceModel", {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "protocol": {"type": "string"},
        "properties": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "type", "accessMode"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "type": {"enum": ["INT", "FLOAT", "DOUBLE", "STRING", "BOOLEAN", "BYTES", "STREAM"]},
                    "accessMode": {"enum": ["ReadWrite", "ReadOnly"]},
                    "minimum": {"type": "string"},
                    "maximum": {"type": "string"},
                    "unit": {"type": "string"},
                },
            },
        },
    },
})

DEVICE = _resource("Device", {
    "type": "object",
    "additionalProperties": False,
    "required": ["deviceModelRef", "protocol"],
    "properties": {
        "deviceModelRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                           "properties": {"name": {"type": "string", "minLength": 1}}},
        "nodeName": {"type": "string"},
        "methods": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                           "propertyNames": {"type": "array", "items": {"type": "string"}}}}},
        "properties": {"type": "array", "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "desired": {"type": "object", "additionalProperties": False, "required": ["value"],
                            "properties": {"value": {"type": "string"}, "metadata": _STRING_MAP}},
                "visitors": {"type": "object", "additionalProperties": False,
                             "properties": {"protocolName": {"type": "string"}, "configData": _OBJECT}},
                "reportCycle": {"type": "integer"},
                "collectCycle": {"type": "integer"},
                "reportToCloud": {"type": "boolean"},
                "pushMethod": _OBJECT,
            },
        }},
        "protocol": {"type": "object", "additionalProperties": False,
                     "properties": {"protocolName": {"type": "string"}, "configData": _OBJECT}},
        "stateReport": _OBJECT,
    },
})

SCHEMAS = {"Device": DEVICE, "DeviceModel": DEVICE_MODEL}


# --- the other CRDs the manifests use: KEDA (keda.sh/v1alpha1) and the Prometheus Operator
# (monitoring.coreos.com/v1), written from their CRDs' openAPIV3Schema: the fields used here,
# their types, and no unknown field.

def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {**_METADATA, "required": ["name", "namespace"]},
            "spec": spec,
        },
    }


_NAME_REF = {"type": "object", "additionalProperties": False, "required": ["name"],
             "properties": {"name": {"type": "string", "minLength": 1}, "kind": {"type": "string"}}}

SCALED_OBJECT = _crd("keda.sh/v1alpha1", "ScaledObject", {
    "type": "object",
    "additionalProperties": False,
    "required": ["scaleTargetRef", "triggers"],
    "properties": {
        "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                           "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                          "apiVersion": {"type": "string"}}},
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "pollingInterval": {"type": "integer"},
        "cooldownPeriod": {"type": "integer"},
        "triggers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
            "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                           "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                           "authenticationRef": _NAME_REF}}},
    },
})

TRIGGER_AUTHENTICATION = _crd("keda.sh/v1alpha1", "TriggerAuthentication", {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "secretTargetRef": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["parameter", "name", "key"],
            "properties": {"parameter": {"type": "string"}, "name": {"type": "string"}, "key": {"type": "string"}}}},
    },
})

SERVICE_MONITOR = _crd("monitoring.coreos.com/v1", "ServiceMonitor", {
    "type": "object",
    "additionalProperties": False,
    "required": ["selector", "endpoints"],
    "properties": {
        "selector": {"type": "object", "additionalProperties": False,
                     "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "namespaceSelector": _OBJECT,
        "endpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["port"],
            "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                           "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                           "scheme": {"enum": ["http", "https"]}}}},
    },
})

SCHEMAS.update({"ScaledObject": SCALED_OBJECT, "TriggerAuthentication": TRIGGER_AUTHENTICATION,
                "ServiceMonitor": SERVICE_MONITOR})
