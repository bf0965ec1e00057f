"""Images on WeChat: the cover as permanent thumb material, content images through
media/uploadimg; each image uploaded once, by its sha256, under a Redis lock."""

from __future__ import annotations

import hashlib
import posixpath
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from django.db import IntegrityError
from django.conf import settings

from nextevent.redis import delete_if_equal, get_redis
from wechat.client import Upload, WechatClient, WechatPermanentError
from wechat.images import content_image_sources, fetch_image, rewrite_content_images
from wechat.models import ImageKind, WechatArticle, WechatImage
from news.models import News

DEFAULT_THUMB_PATH = Path(__file__).resolve().parent.parent / "assets" / "default-thumb.jpg"
THUMB_MAX_BYTES = 64 * 1024  # material/add_material?type=thumb: JPG, at most 64 KB
UPLOAD_LOCK_SECONDS = 60


def cover_media_id(client: WechatClient, article: WechatArticle, news: News) -> str:
    if article.thumb_media_id:
        return article.thumb_media_id
    if news.cover_image:
        name, data = _read_cover(news)
    elif settings.WECHAT_DEFAULT_THUMB_MEDIA_ID:
        return settings.WECHAT_DEFAULT_THUMB_MEDIA_ID
    else:
        name, data = DEFAULT_THUMB_PATH.name, DEFAULT_THUMB_PATH.read_bytes()
    media_id = _uploaded_once(ImageKind.THUMB, data, name,
                              lambda: client.add_thumb_material(Upload(name, data, "image/jpeg")))
    # Recorded at once: a retry must not even look the image up again.
    WechatArticle.objects.filter(pk=article.pk).update(thumb_media_id=media_id)
    article.thumb_media_id = media_id
    return media_id


def _read_cover(news: News) -> tuple[str, bytes]:
    name = posixpath.basename(news.cover_image.name)
    try:
        with news.cover_image.open("rb") as f:
            data = f.read(THUMB_MAX_BYTES + 1)
    except OSError as exc:
        raise WechatPermanentError(f"cover_image: cannot read {news.cover_image.name!r}: {exc}") from None
    if not data.startswith(b"\xff\xd8\xff"):
        raise WechatPermanentError(f"cover_image: {name!r} is not a JPEG; WeChat's cover (thumb material) must be "
                                   "a JPG of at most 64 KB")
    if len(data) > THUMB_MAX_BYTES:
        raise WechatPermanentError(f"cover_image: {name!r} is larger than 64 KB, the most WeChat takes for a "
                                   "cover (thumb material)")
    if not name.lower().endswith((".jpg", ".jpeg")):
        name = f"{name.rsplit('.', 1)[0] or 'cover'}.jpg"  # WeChat goes by the extension (else 40113)
    return name, data


def _uploaded_once(kind: str, data: bytes, filename: str, upload) -> str:
    """The media_id (thumb) or URL (content) of these bytes on WeChat, uploading them only if
    no article did before. A Redis lock keeps two workers from uploading the same image."""
    sha = hashlib.sha256(data).hexdigest()

    def known():
        row = WechatImage.objects.filter(kind=kind, sha256=sha).first()
        return row and (row.media_id or row.url)

    if found := known():
        return found
    with _upload_lock(f"wechat:upload:{kind}:{sha}"):
        if found := known():
            return found
        result = upload()
        field = "media_id" if kind == ImageKind.THUMB else "url"
        try:
            WechatImage.objects.create(kind=kind, sha256=sha, size=len(data), filename=filename[:128],
                                       **{field: result})
        except IntegrityError:  # the lock expired under a very slow upload: both are valid
            pass
    return result


@contextmanager
def _upload_lock(key: str):
    redis, owner = get_redis(), secrets.token_hex(8)
    deadline = time.monotonic() + UPLOAD_LOCK_SECONDS
    while not redis.set(key, owner, nx=True, ex=UPLOAD_LOCK_SECONDS):
        if time.monotonic() > deadline:
            break  # the holder died holding it: uploading twice beats waiting on
        time.sleep(0.1)
    try:
        yield
    finally:
        delete_if_equal(redis, key, owner)


def forget_uploads(article: WechatArticle, thumb_media_id: str) -> bool:
    """draft/add said a media id is invalid (40007: the material was deleted in the account's
    console, or another WeChat forgot it): forget what we cached of this article's cover and
    content images, so that they are uploaded again. WeChat does not say which one it was.
    False if nothing was ours to forget (a configured WECHAT_DEFAULT_THUMB_MEDIA_ID, no images)."""
    cover = WechatImage.objects.filter(kind=ImageKind.THUMB, media_id=thumb_media_id).delete()[0]
    cover += WechatArticle.objects.filter(pk=article.pk, thumb_media_id=thumb_media_id).exclude(
        thumb_media_id="").update(thumb_media_id="")
    urls = list((article.content_images or {}).values())
    WechatImage.objects.filter(kind=ImageKind.CONTENT, url__in=urls).delete()
    WechatArticle.objects.filter(pk=article.pk).update(content_images={})
    article.thumb_media_id, article.content_images = "", {}
    return bool(cover or urls)


def upload_content_images(client: WechatClient, article: WechatArticle, content: str) -> str:
    """WeChat strips images from other hosts: upload each and point the content at WeChat's copy."""
    uploaded = dict(article.content_images or {})
    for src, url in content_image_sources(content):
        if src in uploaded:
            continue
        image = fetch_image(url)
        uploaded[src] = _uploaded_once(ImageKind.CONTENT, image.data, image.filename,
                                       lambda: client.upload_article_image(image))
        WechatArticle.objects.filter(pk=article.pk).update(content_images=uploaded)
    article.content_images = uploaded
    return rewrite_content_images(content, uploaded)

