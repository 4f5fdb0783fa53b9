"""What Ray knows of the cluster and does not publish: its token's gRPC metadata, the autoscaler's node types."""
from __future__ import annotations

def ray_token_metadata() -> tuple:
    """The gRPC metadata Ray's own clients send with their token (empty without one)."""
    from ray._private.authentication.grpc_authentication_client_interceptor import (
        _get_authentication_metadata_tuple)

    return _get_authentication_metadata_tuple()


# ---------------------------------------------------------------- the autoscaler's node types
def autoscaler_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type an autoscaling cluster can add (from the cluster config its
    autoscaler reports to the GCS, ``ray._private.state``); None when there is none, or it
    cannot be read (a local Ray, Ray Client)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - not connected, Ray Client, or no such key: nothing known
        return None
    return None if config is None else [{key: float(value) for key, value in group.resources.items()}
                                        for group in config.node_group_configs if group.max_count != 0]
