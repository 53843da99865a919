import ipaddress

import pytest

from curation.netsafety import address_is_global, canonical_host, is_safe_url, url_rejection


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,AAAA", "javascript:alert(1)",
    "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/a.jpg", "http://192.168.0.1/a.jpg",
    "http://172.16.5.4/x", "http://127.0.0.1:8000/a.jpg", "http://localhost/a.jpg", "http://[::1]/a.jpg",
    "http://[::ffff:10.0.0.1]/a", "http://user:pw@example.com/a.jpg", "http://0.0.0.0/", "//example.com/a",
    "http://example.com:99999/a",
    # numeric and odd spellings a browser (WHATWG URL parser) turns into an internal address
    "http://2130706433/", "http://0x7f000001/", "http://127.1/", "http://0177.0.0.1/", "http://0/",
    "http://0x7f.1/", "http://127.0.0.1./", "http://LOCALHOST./", "http://127\u30020\u30020\u30021/",
    "http://127\uff0e0\uff0e0\uff0e1/", "http://127\uff610\uff610\uff611/", "http://%31%32%37.0.0.1/",
    "http://\uff11\uff12\uff17.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::1]/",
    # not globally routable, though not 'private' in the old sense
    "http://100.64.0.1/", "http://100.100.100.200/latest/meta-data", "http://198.18.0.1/", "http://224.0.0.1/",
    "http://240.0.0.1/", "http://255.255.255.255/", "http://[fc00::1]/", "http://[fe80::1]/",
    # hosts a browser refuses
    "http://1.2.3.4.5/", "http://foo.0x1/", "http://256.0.0.1/", "http://a b.example/",
])
def test_unsafe_urls_rejected(url):
    assert url_rejection(url) is not None


@pytest.mark.parametrize("url", ["http://example.com/a.jpg", "https://cdn.example.org/x/y.png?q=1",
                                 "http://8.8.8.8/a.jpg", "http://134744072/a.jpg", "http://EXAMPLE.com./a",
                                 "http://b\u00fccher.example/a.jpg", "http://a_b.example.com/x"])
def test_public_urls_accepted(url):
    assert is_safe_url(url)


@pytest.mark.parametrize(("host", "canonical"), [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"), ("0", "0.0.0.0"), ("0x7f.0.0.1", "127.0.0.1"), ("10.1", "10.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"), ("EXAMPLE.Com.", "example.com"), ("ex\u3002com", "ex.com"),
    ("ex\uff0ecom", "ex.com"), ("ex\uff61com", "ex.com"), ("\uff25\uff38.com", "ex.com"),
    ("b\u00fccher.de", "xn--bcher-kva.de"), ("[::FFFF:127.0.0.1]", "::ffff:7f00:1"), ("%41.com", "a.com"),
])
def test_hosts_are_canonicalised_like_a_browser(host, canonical):
    assert canonical_host(host) == canonical


def test_globally_routable_means_is_global_unicast():
    for addr in ("8.8.8.8", "2001:4860:4860::8888", "1.1.1.1"):
        assert address_is_global(ipaddress.ip_address(addr))
    for addr in ("100.64.0.1", "127.0.0.2", "0.0.0.0", "169.254.169.254", "224.0.0.251", "::1",
                 "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:a00:1::1",
                 "2001:0:4136:e378:8000:63bf:80ff:fffe"):  # Teredo, client 127.0.0.1
        assert not address_is_global(ipaddress.ip_address(addr)), addr


def test_allow_hosts_by_name_only():
    assert is_safe_url("http://127.0.0.1:8765/img/1.jpg", allow_hosts=["127.0.0.1"])
    assert is_safe_url("http://2130706433:8765/img/1.jpg", allow_hosts=["127.0.0.1"])  # the same host
    assert not is_safe_url("http://localhost:8765/img/1.jpg", allow_hosts=["127.0.0.1"])
    assert not is_safe_url("http://127.0.0.2:8765/img/1.jpg", allow_hosts=["127.0.0.1"])
    assert not is_safe_url("file:///etc/passwd", allow_hosts=["127.0.0.1"])
    assert is_safe_url("http://LOCALHOST.:1/x", allow_hosts=["localhost"])
