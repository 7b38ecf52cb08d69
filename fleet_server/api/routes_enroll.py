"""Device enrollment and certificate renewal (authenticated by token or certificate)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from .context import ApiContext
from .deps import ctx
from .schemas import EnrollIn, EnrollOut, RenewIn

router = APIRouter(prefix="/enroll", tags=["enrollment"])


def _out(c: ApiContext, device_id: str, cert_pem: str, ca_pem: str) -> EnrollOut:
    return EnrollOut(
        device_id=device_id,
        cert_pem=cert_pem,
        ca_pem=ca_pem,
        broker_host=c.settings.broker.host,
        broker_port=c.settings.broker.port,
        tuf_root=c.tuf.root_bytes().decode() if c.tuf is not None else None,
    )


@router.post("", response_model=EnrollOut)
def enroll(body: EnrollIn, request: Request, c: ApiContext = Depends(ctx)) -> EnrollOut:
    issued = c.enrollment.enroll(body.token, body.csr_pem.encode())
    request.state.actor = f"device:{issued.device_id}"
    return _out(c, issued.device_id, issued.cert_pem, issued.ca_pem)


@router.post("/renew", response_model=EnrollOut)
def renew(body: RenewIn, request: Request, c: ApiContext = Depends(ctx)) -> EnrollOut:
    issued = c.enrollment.renew(body.cert_pem.encode(), body.csr_pem.encode(), body.signature_b64)
    request.state.actor = f"device:{issued.device_id}"
    return _out(c, issued.device_id, issued.cert_pem, issued.ca_pem)
