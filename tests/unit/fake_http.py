"""The one piece the clients' unit tests share: a requests transport adapter answering from the test."""
from __future__ import annotations

import json

import requests
from requests.adapters import BaseAdapter


def make_response(request: requests.PreparedRequest, status: int, body) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    response.url = request.url
    response.request = request
    return response


class FakeAdapter(BaseAdapter):
    """Subclasses decide the (status, body) — or an exception to raise — for each request in `answer`."""

    def answer(self, request: requests.PreparedRequest):
        raise NotImplementedError

    def send(self, request, **kwargs):
        out = self.answer(request, **kwargs)
        if isinstance(out, BaseException):
            raise out
        status, body = out
        return make_response(request, status, body)

    def close(self):
        pass
