"""The balance fold: the exchange's snapshots, the fills' effect between them, and drift."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from adapters.deltadefi.session import Session
from ledger.bootstrap import open_ledger
from ledger.domain import BalanceLine, Fill, Side
from projections.balances import AssetBalance, BalanceSheet

D = Decimal


def fill(side: str, qty: str, price: str, fee: str, fee_asset: str, quote_amount: str = "") -> Fill:
    return Fill(
        fill_id=f"{side}-{qty}",
        order_id="o",
        symbol="ADAUSDM",
        base_asset="ADA",
        quote_asset="USDM",
        side=Side(side),
        price=D(price),
        quantity=D(qty),
        quote_amount=D(quote_amount) if quote_amount else D(qty) * D(price),
        fee=D(fee),
        fee_asset=fee_asset,
        role="taker",
        executed_at="2026-03-20T09:00:00.000000Z",
    )


def snapshot(**assets: tuple[str, str]) -> tuple[BalanceLine, ...]:
    return tuple(BalanceLine(a, D(free), D(locked)) for a, (free, locked) in assets.items())


def test_a_snapshot_sets_free_locked_total_and_the_expected_total() -> None:
    sheet = BalanceSheet()
    touched = sheet.apply_snapshot(snapshot(ADA=("1000.5", "20"), USDM=("300", "0")))
    assert touched == {"ADA", "USDM"}
    ada = sheet.assets["ADA"]
    assert (ada.free, ada.locked, ada.total, ada.expected_total) == (
        D("1000.5"),
        D("20"),
        D("1020.5"),
        D("1020.5"),
    )
    # The first snapshot of an asset is the starting point: no drift yet.
    assert (ada.drift_last, ada.drift_sum, ada.snapshots) == (D(0), D(0), 1)


def test_a_buy_adds_base_minus_base_fee_and_spends_the_quote_amount() -> None:
    sheet = BalanceSheet()
    sheet.apply_snapshot(snapshot(ADA=("1000", "0"), USDM=("500", "0")))
    touched = sheet.apply_fill(fill("buy", "100", "0.45", "0.1", "ADA"))
    assert touched == {"ADA", "USDM"}
    assert sheet.assets["ADA"].expected_total == D("1099.9")
    assert sheet.assets["USDM"].expected_total == D("455.00")
    # free/locked remain the exchange's last word until the next snapshot.
    assert sheet.assets["ADA"].free == D("1000")


def test_a_sell_spends_base_and_adds_the_quote_amount_minus_quote_fee() -> None:
    sheet = BalanceSheet()
    sheet.apply_snapshot(snapshot(ADA=("1000", "0"), USDM=("500", "0")))
    sheet.apply_fill(fill("sell", "100", "0.45", "0.045", "USDM", quote_amount="44.999"))
    assert sheet.assets["ADA"].expected_total == D("900")
    # The reported quote amount is used, not price x quantity.
    assert sheet.assets["USDM"].expected_total == D("544.954")


def test_drift_is_snapshot_total_minus_expected_and_the_expected_total_restarts() -> None:
    sheet = BalanceSheet()
    sheet.apply_snapshot(snapshot(ADA=("1000", "0"), USDM=("500", "0")))
    sheet.apply_fill(fill("buy", "100", "0.45", "0.1", "ADA"))
    # The exchange agrees on ADA; USDM shows 5 more (a deposit the ledger cannot see).
    sheet.apply_snapshot(snapshot(ADA=("1099.9", "0"), USDM=("450", "10")))
    ada, usdm = sheet.assets["ADA"], sheet.assets["USDM"]
    assert (ada.drift_last, ada.drift_sum, ada.expected_total) == (D(0), D(0), D("1099.9"))
    assert (usdm.drift_last, usdm.drift_sum, usdm.expected_total) == (D("5"), D("5"), D("460"))
    assert (usdm.free, usdm.locked, usdm.total, usdm.snapshots) == (D("450"), D("10"), D("460"), 2)

    sheet.apply_snapshot(snapshot(USDM=("458", "0")))
    assert (usdm.drift_last, usdm.drift_sum) == (D("-2"), D("3"))
    # An asset a snapshot does not list is left as it was.
    assert (ada.free, ada.snapshots) == (D("1099.9"), 2)


def test_fills_before_any_snapshot_are_overridden_by_the_first_snapshot_without_drift() -> None:
    sheet = BalanceSheet()
    sheet.apply_fill(fill("buy", "10", "2", "0.01", "ADA"))
    assert sheet.assets["ADA"].expected_total == D("9.99")
    assert sheet.assets["USDM"].expected_total == D("-20")
    sheet.apply_snapshot(snapshot(ADA=("50", "0")))
    ada = sheet.assets["ADA"]
    assert (ada.expected_total, ada.drift_last, ada.drift_sum) == (D("50"), D(0), D(0))


def test_a_fee_in_a_third_asset_comes_off_that_asset() -> None:
    sheet = BalanceSheet()
    touched = sheet.apply_fill(fill("buy", "10", "2", "0.3", "NIGHT"))
    assert touched == {"ADA", "USDM", "NIGHT"}
    assert sheet.assets["NIGHT"].expected_total == D("-0.3")
    assert sheet.assets["ADA"].expected_total == D("10")


def test_record_round_trip_is_exact() -> None:
    bal = AssetBalance("ADA", D("1.000001"), D("0"), D("2.5"), D("-0.1"), D("0.3"), 4)
    assert AssetBalance.from_record(bal.to_record()) == bal


def test_a_consistent_session_has_zero_drift_and_expected_totals_equal_the_exchange(
    tmp_path: Path,
) -> None:
    """Through the real log: the generated session's snapshots agree with its fills."""
    session = Session(seed=11, duplicate_rate=0.1, snapshot_every=15)
    frames = [f.encode() for f in session.frames(600)]
    services = open_ledger(str(tmp_path / "ledger.sqlite"))
    try:
        services.ingest_and_project(enumerate(frames, start=1), "session.jsonl")
        state = services.projector.load()
    finally:
        services.close()
    assert state.fills.count == len(session.truth.fills)
    assert set(state.balances.assets) == set(session.truth.balances)
    for asset, amount in session.truth.balances.items():
        bal = state.balances.assets[asset]
        assert bal.total == amount, asset
        assert bal.expected_total == amount, asset
        assert bal.drift_sum == 0 and bal.drift_last == 0, asset
        assert bal.snapshots > 1, asset
