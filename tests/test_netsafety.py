import pytest

from shared.netsafety import is_safe_url, url_rejection


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,AAAA", "javascript:alert(1)",
    "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/a.jpg", "http://192.168.0.1/a.jpg",
    "http://172.16.5.4/x", "http://127.0.0.1:8000/a.jpg", "http://localhost/a.jpg", "http://[::1]/a.jpg",
    "http://[::ffff:10.0.0.1]/a", "http://user:pw@example.com/a.jpg", "http://0.0.0.0/", "//example.com/a",
    "http://example.com:99999/a",
])
def test_unsafe_urls_rejected(url):
    assert url_rejection(url) is not None


@pytest.mark.parametrize("url", ["http://example.com/a.jpg", "https://cdn.example.org/x/y.png?q=1",
                                 "http://8.8.8.8/a.jpg"])
def test_public_urls_accepted(url):
    assert is_safe_url(url)


def test_allow_hosts_by_name_only():
    assert is_safe_url("http://127.0.0.1:8765/img/1.jpg", allow_hosts=["127.0.0.1"])
    assert not is_safe_url("http://localhost:8765/img/1.jpg", allow_hosts=["127.0.0.1"])
    assert not is_safe_url("file:///etc/passwd", allow_hosts=["127.0.0.1"])
