"""tegrastats parser over published lines from eight Jetson models / JetPack versions.

The lines are in data/formats.txt, copied verbatim from where they were published (the comment
line above each names the source):
  agx_orin_jp5    AGX Orin 64GB, JetPack 5/6 .......... GDWR/jetson_exporter issue #14
  orin_nx_jp6     Orin NX / Orin Nano, JetPack 6 ...... rbonghi/jetson_stats issue #624
  agx_xavier_jp42 AGX Xavier, JetPack 4.2 ............. martinkersner/gtop pull request #7
  nano_jp4        Nano, JetPack 4 ..................... rbonghi/jetson_stats tests/tegrastats
  tx2_jp4         TX2, JetPack 4 ...................... henrygd/beszel pull request #1631
  tx2_jp46_off    TX2 NX, JetPack 4.6 (cores off) ..... rbonghi/jetson_stats issue #187
  tx1_l4t28       TX1, L4T 28.1 ....................... hordiales/jetson-tx1-dev SCRIPTS.md
  agx_orin_jp72   AGX Orin, JetPack 7.2 (fields quoted) rbonghi/jetson_stats pull request #894
Every field of every line is checked. Forms no published full line showed us (three-value
rails; GR3D_FREQ @[..] without load, from the Thor row of the table in jetson_stats PR #894)
are tested on lines built from the published ones and say so.
"""
import json
import os

import pytest

from qail_ros.monitor.tegrastats import (ABSENT_TEMPERATURE_C, Engine, parse_line, parse_lines,
                                         total_power_mw)

DATA = os.path.join(os.path.dirname(__file__), 'data')


def _lines() -> dict[str, str]:
    out, key = {}, None
    with open(os.path.join(DATA, 'formats.txt')) as f:
        for line in f:
            if line.startswith('# ['):
                key = line[3:line.index(']')]
            elif not line.startswith('#') and line.strip():
                out[key] = line.rstrip('\n')
    return out


LINES = _lines()


def rails(sample):
    return {n: (r.cur_mw, r.avg_mw) for n, r in sample.rails.items()}


def cores(sample):
    return [(c.load_percent, c.freq_mhz) for c in sample.cpu]


def engines(sample):
    return {n: (e.load_percent, e.freq_mhz, e.freqs_mhz, e.off) for n, e in
            sample.engines.items()}


def test_every_format_is_present_and_fully_understood():
    assert len(LINES) == 8
    for key, line in LINES.items():
        assert parse_line(line).unparsed == [], key


def test_agx_orin_jetpack5():
    s = parse_line(LINES['agx_orin_jp5'])
    assert s.timestamp == '2025-04-11T10:36:27'
    assert s.ram_mb == (4321.0, 62801.0) and s.lfb == (1759, 4.0)
    assert s.swap_mb == (19.0, 31400.0) and s.swap_cached_mb == 0.0
    assert s.iram_kb is None and s.mts_percent is None
    assert cores(s) == [(0.0, 729.0)] * 12
    assert engines(s) == {'EMC': (0.0, 2133.0, (2133.0,), False),
                          'GR3D': (0.0, 0.0, (0.0, 0.0), False),
                          'VIC': (None, 729.0, (729.0,), False),
                          'APE': (None, 174.0, (174.0,), False)}
    assert s.temperatures_c == {'CPU': 44.562, 'Tboard': 32.0, 'SOC2': 40.093, 'Tdiode': 33.0,
                                'SOC0': 41.093, 'tj': 44.343, 'SOC1': 41.25}
    assert s.absent_sensors == ['CV0', 'CV1', 'GPU', 'CV2']     # the -256C sentinel
    assert rails(s) == {'VDD_GPU_SOC': (2340.0, 2340.0), 'VDD_CPU_CV': (390.0, 390.0),
                        'VIN_SYS_5V0': (4025.0, 4025.0), 'NC': (0.0, 0.0),
                        'VDDQ_VDD2_1V8AO': (301.0, 301.0)}
    # no input rail on AGX Orin: the sum of the connected rails
    assert total_power_mw(s.rails) == (2340.0 + 390.0 + 4025.0 + 301.0,
                                       'VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO')
    assert s.gpu.load_percent == 0.0 and s.gpu.freq_mhz == 0.0


def test_orin_nx_jetpack6():
    s = parse_line(LINES['orin_nx_jp6'])
    assert s.timestamp == '2025-05-15T18:30:28'
    assert s.ram_mb == (6982.0, 7620.0) and s.lfb == (5, 1.0)
    assert s.swap_mb == (2640.0, 16384.0) and s.swap_cached_mb == 202.0
    assert cores(s) == [(97.0, 1984.0), (95.0, 1984.0), (95.0, 1984.0), (91.0, 1984.0),
                        (88.0, 1984.0), (93.0, 247.0)]
    assert engines(s) == {'EMC': (18.0, 3199.0, (3199.0,), False),
                          'GR3D': (84.0, 713.0, (713.0,), False),       # 84%@[713]
                          'NVENC': (1.0, 115.0, (115.0,), False),
                          'NVDEC': (40.0, 115.0, (115.0,), False),
                          'NVJPG': (None, None, (), True), 'NVJPG1': (None, None, (), True),
                          'VIC': (31.0, 115.0, (115.0,), False),
                          'OFA': (None, None, (), True), 'NVDLA0': (None, None, (), True),
                          'PVA0': (None, None, (), True),
                          'APE': (None, 174.0, (174.0,), False)}
    assert s.temperatures_c == {'cv0': 63.031, 'cpu': 65.562, 'soc2': 64.156, 'soc0': 63.031,
                                'cv1': 62.937, 'gpu': 63.5, 'tj': 65.562, 'soc1': 64.718,
                                'cv2': 60.875}
    assert s.absent_sensors == []
    assert rails(s) == {'VDD_IN': (17946.0, 15710.0), 'VDD_CPU_GPU_CV': (8896.0, 7585.0),
                        'VDD_SOC': (3923.0, 3515.0)}
    assert total_power_mw(s.rails) == (17946.0, 'VDD_IN')
    assert s.cpu_load_percent() == pytest.approx((97 + 95 + 95 + 91 + 88 + 93) / 6)


def test_agx_xavier_jetpack42_rails_without_units():
    s = parse_line(LINES['agx_xavier_jp42'])
    assert s.timestamp is None
    assert s.ram_mb == (14700.0, 15692.0) and s.lfb == (3, 2.0)
    assert s.swap_mb == (898.0, 8192.0) and s.swap_cached_mb == 23.0
    assert cores(s) == [(0.0, 1190.0)] * 8
    assert engines(s) == {'EMC': (0.0, None, (), False), 'GR3D': (0.0, None, (), False)}
    assert s.temperatures_c == {'AO': 30.0, 'GPU': 30.5, 'Tboard': 31.0, 'Tdiode': 32.0,
                                'AUX': 30.5, 'CPU': 31.5, 'thermal': 30.8, 'PMIC': 100.0}
    # rails named like temperature sensors (GPU, CPU) are still rails: 'NAME a/b'
    assert rails(s) == {'GPU': (463.0, 463.0), 'CPU': (618.0, 618.0), 'SOC': (2936.0, 2936.0),
                        'CV': (0.0, 0.0), 'VDDRQ': (309.0, 309.0), 'SYS5V': (3306.0, 3306.0)}
    assert total_power_mw(s.rails)[0] == 463 + 618 + 2936 + 0 + 309 + 3306


def test_nano_jetpack4_pom_rails_and_iram():
    s = parse_line(LINES['nano_jp4'])
    assert s.ram_mb == (1180.0, 3965.0) and s.lfb == (1, 2.0)
    assert s.swap_mb == (149.0, 1024.0) and s.swap_cached_mb == 7.0
    assert s.iram_kb == (0.0, 252.0)
    assert cores(s) == [(30.0, 1036.0), (33.0, 1036.0), (28.0, 1036.0), (26.0, 1036.0)]
    assert engines(s) == {'EMC': (10.0, 1600.0, (1600.0,), False),
                          'GR3D': (0.0, 76.0, (76.0,), False),
                          'NVENC': (None, 716.0, (716.0,), False),
                          'NVDEC': (None, 716.0, (716.0,), False),
                          'APE': (None, 25.0, (25.0,), False)}
    assert s.temperatures_c == {'PLL': 57.0, 'CPU': 60.5, 'PMIC': 100.0, 'GPU': 59.0,
                                'AO': 65.0, 'thermal': 59.75}
    assert rails(s) == {'POM_5V_IN': (4520.0, 4680.0), 'POM_5V_GPU': (0.0, 0.0),
                        'POM_5V_CPU': (1078.0, 1205.0)}
    assert total_power_mw(s.rails) == (4520.0, 'POM_5V_IN')
    assert s.rails['POM_5V_IN'].power_w == pytest.approx(4.52)


def test_tx2_jetpack4_mts_and_rails():
    s = parse_line(LINES['tx2_jp4'])
    assert s.ram_mb == (3276.0, 7859.0) and s.lfb == (5, 4.0)
    assert s.swap_mb == (1626.0, 12122.0) and s.swap_cached_mb == 181.0
    assert cores(s) == [(44.0, 1421.0), (49.0, 2031.0), (67.0, 2034.0), (17.0, 1420.0),
                        (25.0, 1419.0), (8.0, 1420.0)]
    assert engines(s) == {'EMC': (1.0, 1866.0, (1866.0,), False),
                          'GR3D': (0.0, 114.0, (114.0,), False),          # 0%@114
                          'APE': (None, 150.0, (150.0,), False)}
    assert s.mts_percent == (1.0, 1.0)
    assert s.temperatures_c == {'PLL': 42.5, 'MCPU': 42.5, 'PMIC': 50.0, 'Tboard': 38.0,
                                'GPU': 39.5, 'BCPU': 42.5, 'thermal': 41.3, 'Tdiode': 39.25}
    assert rails(s) == {'VDD_SYS_GPU': (182.0, 182.0), 'VDD_SYS_SOC': (730.0, 730.0),
                        'VDD_4V0_WIFI': (0.0, 0.0), 'VDD_IN': (5297.0, 5297.0),
                        'VDD_SYS_CPU': (1917.0, 1917.0), 'VDD_SYS_DDR': (1241.0, 1241.0)}
    assert total_power_mw(s.rails) == (5297.0, 'VDD_IN')


def test_tx2_off_cores():
    s = parse_line(LINES['tx2_jp46_off'])
    assert s.ram_mb == (1689.0, 3825.0) and s.lfb == (339, 4.0)
    assert s.swap_mb == (0.0, 1913.0) and s.swap_cached_mb == 0.0
    assert cores(s) == [(3.0, 345.0), (None, None), (None, None), (0.0, 345.0), (1.0, 345.0),
                        (1.0, 345.0)]
    assert [c.online for c in s.cpu] == [True, False, False, True, True, True]
    assert s.cpu_load_percent() == pytest.approx((3 + 0 + 1 + 1) / 4)   # off cores excluded
    assert engines(s) == {'EMC': (0.0, None, (), False), 'GR3D': (0.0, None, (), False)}
    assert s.temperatures_c == {'PLL': 50.5, 'MCPU': 50.5, 'PMIC': 50.0, 'GPU': 50.0,
                                'BCPU': 50.5, 'thermal': 50.3}
    assert s.rails == {} and total_power_mw(s.rails) == (None, '')


def test_tx1_shared_cpu_frequency():
    s = parse_line(LINES['tx1_l4t28'])
    assert s.ram_mb == (3607.0, 3983.0) and s.lfb == (47, 4.0)
    assert s.swap_mb == (873.0, 8192.0) and s.swap_cached_mb == 281.0
    assert cores(s) == [(17.0, 1734.0), (11.0, 1734.0), (65.0, 1734.0), (0.0, 1734.0)]
    assert engines(s) == {'EMC': (1.0, 1600.0, (1600.0,), False),
                          'APE': (None, 25.0, (25.0,), False),
                          'GR3D': (39.0, 76.0, (76.0,), False)}
    assert s.temperatures_c == {} and s.rails == {}


def test_agx_orin_jetpack72_gpc_array_and_cur_avg_temperature():
    s = parse_line(LINES['agx_orin_jp72'])
    assert s.timestamp == '2026-07-25T09:08:28'
    assert s.ram_mb == (20642.0, 62817.0) and s.lfb == (1, 2.0)
    assert engines(s) == {'EMC': (3.0, 3199.0, (3199.0,), False),
                          'GR3D': (0.0, 1300.0, (1300.0, 1300.0), False),   # 0%@[1300,1300]
                          'NVENC0': (None, None, (), True), 'NVDEC0': (None, None, (), True),
                          'APE': (None, 174.0, (174.0,), False)}
    assert s.temperatures_c == {'cpu': 52.968}          # name@cur/avgC
    assert s.temperatures_avg_c == {'cpu': 52.968}


def test_forms_not_seen_in_a_full_published_line():
    # Built from the orin_nx_jp6 line: three values per rail, GR3D without load (Thor row of
    # jetson_stats PR #894's table), a cur/avg temperature that differs, an absent sensor.
    s = parse_line('RAM 6982/7620MB (lfb 5x1MB) GR3D_FREQ @[1000,1000,1000] EMC_FREQ @2133 '
                   'gpu@63.5C/61.25C cv0@-256C VDD_IN 17946mW/15710mW/18500mW '
                   'VDD_SOC 3923/3515/4000')
    assert s.unparsed == []
    assert s.engines['GR3D'] == Engine(None, 1000.0, (1000.0, 1000.0, 1000.0))
    assert s.engines['EMC'] == Engine(None, 2133.0, (2133.0,))
    assert s.temperatures_c == {'gpu': 63.5} and s.temperatures_avg_c == {'gpu': 61.25}
    assert s.absent_sensors == ['cv0'] and ABSENT_TEMPERATURE_C == -256.0
    assert (s.rails['VDD_IN'].cur_mw, s.rails['VDD_IN'].avg_mw, s.rails['VDD_IN'].max_mw) == (
        17946.0, 15710.0, 18500.0)
    assert (s.rails['VDD_SOC'].cur_mw, s.rails['VDD_SOC'].max_mw) == (3923.0, 4000.0)
    assert s.to_json()['rails']['VDD_IN'] == {'cur_mw': 17946.0, 'avg_mw': 15710.0}


def test_second_gpc_is_folded_into_gpu():
    # Orin NX JetPack 5.1 (jetson_stats issue #362): 'GR3D_FREQ 99%@917 GR3D2_FREQ 99%@0'
    s = parse_line('GR3D_FREQ 99%@917 GR3D2_FREQ 99%@0')
    assert s.gpu.load_percent == 99.0 and s.gpu.freq_mhz == 917.0
    assert s.gpu.freqs_mhz == (917.0, 0.0)


def test_unknown_tokens_are_kept_never_raise():
    s = parse_line('RAM 100/200MB FOO bar@ 12%% VDD_IN 5/5 [weird] NEWFIELD 1x2')
    assert s.ram_mb == (100.0, 200.0)
    assert s.rails['VDD_IN'].cur_mw == 5.0
    assert s.unparsed == ['FOO', 'bar@', '12%%', '[weird]', 'NEWFIELD', '1x2']
    for junk in ('', '   ', 'CPU [', 'CPU [abc,def]', 'RAM', '@@@', '01-02-2020',
                 '99-99-9999 99:99:99 RAM 1/2MB'):
        parse_line(junk)   # must not raise
    assert parse_line('99-99-9999 99:99:99 RAM 1/2MB').timestamp is None


def test_json_has_exactly_the_documented_keys():
    for key, line in LINES.items():
        obj = json.loads(json.dumps(parse_line(line).to_json()))
        expected = {'rails', 'cpu', 'gpu', 'ram_mb', 'swap_mb', 'temperatures_c', 'unparsed'}
        if key in ('agx_orin_jp5', 'orin_nx_jp6', 'agx_orin_jp72'):
            expected.add('timestamp')
        assert set(obj) == expected, key
        for rail in obj['rails'].values():
            assert set(rail) == {'cur_mw', 'avg_mw'}
        for core in obj['cpu']:
            assert set(core) == {'load_percent', 'freq_mhz'}
        assert obj['gpu'] is None or set(obj['gpu']) == {'load_percent', 'freq_mhz'}
        assert obj['ram_mb'] is None or set(obj['ram_mb']) == {'used', 'total'}
        assert obj['swap_mb'] is None or set(obj['swap_mb']) == {'used', 'total'}
        assert all(v > ABSENT_TEMPERATURE_C for v in obj['temperatures_c'].values())
    obj = parse_line(LINES['tx2_jp46_off']).to_json()
    assert obj['cpu'][1] == {'load_percent': None, 'freq_mhz': None}
    obj = parse_line(LINES['agx_orin_jp5']).to_json()
    assert 'GPU' not in obj['temperatures_c'] and obj['temperatures_c']['tj'] == 44.343


def test_kilobyte_sizes_and_power_rail_selection():
    s = parse_line('RAM 4722/7844MB (lfb 1x512kB) SWAP 1/2GB (cached 512kB)')
    assert s.lfb == (1, 0.5) and s.swap_mb == (1024.0, 2048.0) and s.swap_cached_mb == 0.5
    rails_ = parse_line('VDD_IN 5000mW/5000mW VDD_SOC 1000mW/1000mW').rails
    assert total_power_mw(rails_, ['VDD_SOC']) == (1000.0, 'VDD_SOC')
    assert total_power_mw(rails_, ['VDD_GPU']) == (None, 'VDD_GPU')


def test_parse_lines_skips_blanks():
    assert len(list(parse_lines(['', LINES['nano_jp4'], '  \n', LINES['tx1_l4t28']]))) == 2
