"""Reading sites from every supported format, ids, buffers and repairs."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from aoi import read_sites
from aoi.sites import geometry_ids
from detector.errors import InputError, MissingFileError

POINTS = gpd.GeoDataFrame(
    {"name": ["Dabancheng Facility #1", "Кашгар", "喀什 设施"], "tier": [3, 2, 1]},
    geometry=gpd.points_from_xy([88.2899, 75.99, 76.01], [43.3838, 39.47, 39.48]), crs=4326)


@pytest.mark.parametrize("suffix,driver", [(".geojson", "GeoJSON"), (".gpkg", "GPKG"), (".shp", "ESRI Shapefile"),
                                           (".kml", "KML")])
def test_vector_formats_give_buffered_polygons_with_ids_and_attributes(tmp_path: Path, suffix: str,
                                                                       driver: str) -> None:
    path = tmp_path / f"sites{suffix}"
    POINTS.to_file(path, driver=driver)
    sites = read_sites(path, buffer_m=500)
    assert sites.crs.to_epsg() == 4326
    assert sites["site_id"].is_unique
    names = sites["name"] if "name" in sites else sites["Name"]
    assert list(names) == list(POINTS["name"])
    if driver != "KML":  # GDAL's KML driver adds its own id column
        assert list(sites["site_id"]) == list(POINTS["name"])
    assert (sites.geom_type == "Polygon").all()
    areas = sites.to_crs(sites.estimate_utm_crs()).area
    assert np.allclose(areas.iloc[:1], np.pi * 500**2, rtol=0.01)
    if driver != "KML":
        assert list(sites["tier"].astype(int)) == [3, 2, 1]


@pytest.mark.parametrize("lon,lat", [("lon", "lat"), ("Longitude", "Latitude"), ("Long", "Lat"), ("x", "y")])
def test_csv_coordinate_columns_are_detected(tmp_path: Path, lon: str, lat: str) -> None:
    path = tmp_path / "sites.csv"
    path.write_text(f"Number,{lon},{lat},note\n1,88.29,43.38,a\n2,88.27,43.37,b\n", encoding="utf-8")
    sites = read_sites(path, buffer_m=200)
    assert list(sites["site_id"]) == ["1", "2"]
    assert list(sites["note"]) == ["a", "b"]
    assert sites.geometry.iloc[0].contains(shapely.Point(88.29, 43.38))


def test_csv_columns_given_by_option(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    path.write_text("E,N\n88.29,43.38\n", encoding="utf-8")
    assert len(read_sites(path, lon_col="E", lat_col="N")) == 1


def test_csv_without_coordinates_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    path.write_text("east,north\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"sites.csv has no longitude or latitude column.*--lon-col"):
        read_sites(path)


def test_csv_with_a_bad_coordinate_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "sites.csv"
    path.write_text("lon,lat\n88.29,43.38\n88.1,north\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 3"):
        read_sites(path)


def test_polygons_are_kept_and_invalid_ones_repaired(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(88.0, 43.0), (88.01, 43.01), (88.01, 43.0), (88.0, 43.01)])
    square = shapely.box(88.1, 43.1, 88.11, 43.11)
    path = tmp_path / "polys.geojson"
    gpd.GeoDataFrame({"id": ["a", "b"]}, geometry=[bowtie, square], crs=4326).to_file(path)
    sites = read_sites(path)
    assert sites.is_valid.all()
    assert sites.geometry.iloc[1].equals(square)


def test_empty_geometry_is_rejected_naming_the_row(tmp_path: Path) -> None:
    path = tmp_path / "sites.geojson"
    path.write_text('{"type":"FeatureCollection","features":['
                    '{"type":"Feature","geometry":{"type":"Point","coordinates":[88,43]},"properties":{}},'
                    '{"type":"Feature","geometry":null,"properties":{}}]}', encoding="utf-8")
    with pytest.raises(InputError, match="row 2"):
        read_sites(path)


def test_ids_fall_back_to_a_stable_geometry_hash(tmp_path: Path) -> None:
    path = tmp_path / "sites.geojson"
    gpd.GeoDataFrame({"tier": [1, 1]}, geometry=POINTS.geometry.iloc[:2].values, crs=4326).to_file(path)
    first, second = read_sites(path), read_sites(path)
    assert list(first["site_id"]) == list(second["site_id"])
    assert first["site_id"].is_unique and first["site_id"].str.startswith("s").all()
    twin = geometry_ids(np.array([shapely.Point(1, 1), shapely.Point(1, 1)]))
    assert twin[0] != twin[1]


def test_missing_empty_and_unreadable_site_files(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"nothing\.geojson does not exist"):
        read_sites(tmp_path / "nothing.geojson")
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type":"FeatureCollection","features":[]}', encoding="utf-8")
    with pytest.raises(InputError, match="holds no sites"):
        read_sites(empty)
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"this is not a geopackage")
    with pytest.raises(InputError, match=r"junk\.gpkg is not a vector file"):
        read_sites(junk)


def test_columns_of_two_files_that_differ_only_in_case_are_renamed(tmp_path) -> None:
    import json

    from aoi import read_site_files

    for name, column in (("a.geojson", "Name"), ("b.geojson", "name")):
        (tmp_path / name).write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {column: f"{name} site", "name_2": "taken"},
             "geometry": {"type": "Point", "coordinates": [88.0 + len(name), 43.0]}}]}))
    sites = read_site_files([tmp_path / "a.geojson", tmp_path / "b.geojson"])
    assert {"Name", "name_3", "name_2"} <= set(sites.columns)
    assert len({c.lower() for c in sites.columns}) == len(sites.columns)
    assert sites["name_3"].tolist()[1] == "b.geojson site"


def test_a_site_id_column_that_cannot_be_the_ids_is_kept_and_the_id_source_said(tmp_path, caplog) -> None:
    import json
    import logging

    path = tmp_path / "s.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"site_id": "same", "name": name},
         "geometry": {"type": "Point", "coordinates": [88.0 + k, 43.0]}} for k, name in enumerate(("a", "b"))]}))
    with caplog.at_level(logging.INFO):
        sites = read_sites(path)
    assert sites["site_id"].tolist() == ["a", "b"] and sites["user_site_id"].tolist() == ["same", "same"]
    assert "site ids from column 'name'" in caplog.text and "kept as user_site_id" in caplog.text


def test_a_csv_with_latitude_over_90_asks_whether_the_columns_are_swapped(tmp_path) -> None:
    path = tmp_path / "swapped.csv"
    path.write_text("lon,lat\n43.38,100.29\n", encoding="utf-8")  # a site east of 90 E, columns swapped
    with pytest.raises(InputError, match=r"line 2 has no valid coordinates \(lon=43.38, lat=100.29\)") as caught:
        read_sites(path)
    assert "swapped" in str(caught.value) and "np.float64" not in str(caught.value)
    path.write_text("lon,lat\n200.5,43.38\n", encoding="utf-8")
    with pytest.raises(InputError, match="give decimal degrees"):
        read_sites(path)


def test_longitudes_past_180_are_degrees_and_projected_numbers_are_refused(tmp_path: Path) -> None:
    import json

    from aoi.sites import read_sites
    from detector.errors import InputError

    def collection(coordinates: list) -> dict:
        polygon = {"type": "Polygon", "coordinates": [coordinates]}
        return {"type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {"name": "a"}, "geometry": polygon}]}

    across = tmp_path / "across.geojson"  # unwrapped across the antimeridian, as PROJ takes it
    ring = [[179.99, 10], [180.01, 10], [180.01, 10.01], [179.99, 10.01], [179.99, 10]]
    across.write_text(json.dumps(collection(ring)))
    assert read_sites(across).total_bounds[2] > 180
    metres = tmp_path / "metres.geojson"
    ring = [[500000, 4800000], [500100, 4800000], [500100, 4800100], [500000, 4800000]]
    metres.write_text(json.dumps(collection(ring)))
    with pytest.raises(InputError, match=r"metres.geojson row 1 lies at x=500000 in EPSG:4326"):
        read_sites(metres)


def test_a_source_of_several_layers_reads_its_sites_layer_or_is_refused(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import Point

    from aoi.sites import read_sites
    from detector.errors import InputError

    frame = gpd.GeoDataFrame({"name": ["a"]}, geometry=[Point(88.3, 43.4)], crs=4326)
    two = tmp_path / "two.gpkg"
    frame.to_file(two, layer="other")
    frame.assign(name=["b"]).to_file(two, layer="sites")
    assert read_sites(two)["name"].tolist() == ["b"]  # a batch's sites.gpkg: its sites layer
    neither = tmp_path / "neither.gpkg"
    frame.to_file(neither, layer="roads")
    frame.to_file(neither, layer="camps")
    with pytest.raises(InputError, match=r"neither.gpkg holds 2 layers \(roads, camps\)"):
        read_sites(neither)
