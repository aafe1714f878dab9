"""COCO ground truth: reading it, and mapping records onto it.

``GroundTruthIndex`` maps visiontool records onto a COCO ground-truth file: image ids
come from ``images[].file_name`` (matched by full relative path, then by base name) and
category ids are matched **by name** (models number classes differently: DETR uses COCO
ids 1-90, RT-DETR 0-79).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


from visiontool.convert import xyxy_to_xywh  # noqa: F401 (box spellings live in convert)
from visiontool.errors import InvalidInputError
from visiontool.masks import decode as decode_rle  # noqa: F401 (masks live in visiontool.masks)
from visiontool.masks import encode as encode_rle  # noqa: F401


def _norm_name(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def load_json_file(path: str | os.PathLike, what: str) -> object:
    """A JSON file or stream as Python objects (json's reading: NaN and Infinity tokens
    accepted). A path that is neither a regular file nor a stream, content that cannot start
    JSON (checked on its first bytes, before the rest is read), invalid or too deeply nested
    JSON: one-line errors."""
    from visiontool.io.json_input import check_input_path, json_start
    from visiontool.io.readers import read_stream

    try:
        if check_input_path(str(path), what) == "stream":  # stdin, or a FIFO such as <(zcat gt.json.gz)
            data = read_stream(path)
            json_start(data[:1 << 16], f"{what} '{path}'")
            return json.loads(data)
        with open(path, "rb") as fh:
            json_start(fh.read(1 << 16), f"{what} '{path}'")
            fh.seek(0)
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{what} '{path}' is not valid JSON: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} '{path}' is not UTF-8 JSON") from exc
    except RecursionError:
        raise InvalidInputError(f"{what} '{path}' is nested too deeply to be COCO data (JSON nested thousands "
                                f"of levels deep)") from None


@dataclass
class GroundTruthIndex:
    """Lookups from file names and category names into a COCO ground truth."""

    path: str
    images_by_name: dict[str, int] = field(default_factory=dict)
    images_by_base: dict[str, int] = field(default_factory=dict)
    ambiguous_bases: set[str] = field(default_factory=set)
    categories_by_name: dict[str, int] = field(default_factory=dict)
    category_names: dict[int, str] = field(default_factory=dict)
    image_ids: set[int] = field(default_factory=set)
    ambiguous_names: dict[str, list[int]] = field(default_factory=dict)  # a name two categories share: their ids

    @classmethod
    def from_dict(cls, gt: dict, path: str = "<gt>") -> "GroundTruthIndex":
        if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
            raise InvalidInputError(f"ground truth '{path}' has no 'images' list (not a COCO annotation file)")
        if not isinstance(gt.get("categories"), list):
            raise InvalidInputError(f"ground truth '{path}' has no 'categories' list")
        from visiontool.io.gt_read import checked_ids

        idx = cls(path)
        for i, im in enumerate(gt["images"]):
            if not isinstance(im, dict) or "id" not in im:
                raise InvalidInputError(f"ground truth '{path}': images[{i}] has no 'id'")
        for im, iid in zip(gt["images"], checked_ids(gt["images"], "images", path)):
            idx.image_ids.add(iid)
            fn = im.get("file_name")
            if not fn:
                continue
            idx.images_by_name[os.path.normpath(fn)] = iid
            base = os.path.basename(fn)
            if base in idx.images_by_base and idx.images_by_base[base] != iid:
                idx.ambiguous_bases.add(base)
            idx.images_by_base[base] = iid
        for i, cat in enumerate(gt["categories"]):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise InvalidInputError(f"ground truth '{path}': categories[{i}] needs 'id' and 'name'")
        for cat, cid in zip(gt["categories"], checked_ids(gt["categories"], "categories", path)):
            name = _norm_name(cat["name"])
            if idx.categories_by_name.get(name, cid) != cid:
                idx.ambiguous_names.setdefault(name, [idx.categories_by_name[name]]).append(cid)
            idx.categories_by_name[name] = cid
            idx.category_names[cid] = str(cat["name"])
        return idx

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GroundTruthIndex":
        return cls.from_dict(load_json_file(path, "ground truth"), str(path))

    def image_id_for(self, image_name: str) -> int | None:
        """The GT image id for a record's ``image`` (path or URL), or None if not in the GT."""
        name = image_name.split("?")[0]
        norm = os.path.normpath(name)
        # longest path suffix that the GT names exactly, then the base name if unambiguous
        parts = Path(norm).parts
        for k in range(len(parts)):
            cand = os.path.join(*parts[k:]) if parts[k:] else ""
            if cand in self.images_by_name:
                return self.images_by_name[cand]
        base = os.path.basename(norm)
        if base in self.ambiguous_bases:
            return None
        return self.images_by_base.get(base)

    def category_id_for(self, name: str) -> int | None:
        """The GT category named ``name`` (case, spaces and underscores aside); InvalidInputError
        when two categories share that name: a label cannot say which is meant."""
        norm = _norm_name(name)
        ids = self.ambiguous_names.get(norm)
        if ids:
            listed = f"{', '.join(map(str, ids[:-1]))} and {ids[-1]} are {'both' if len(ids) == 2 else 'all'}"
            raise InvalidInputError(f"ground truth '{self.path}': categories {listed} named '{name}', so a label "
                                    f"'{name}' cannot say which; rename one in the ground truth (or give COCO results "
                                    "with category_id)")
        return self.categories_by_name.get(norm)
