"""ament_python package habc_bridge (see package.xml)."""

from setuptools import find_packages, setup

package_name = "habc_bridge"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="habc maintainers",
    maintainer_email="maintainers@habc.dev",
    description="habc stack: see package.xml",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "habc-serve-policy = habc_bridge.serve:main",
            "habc-export-lerobot = habc_bridge.lerobot_cli:export_main",
            "habc-import-lerobot = habc_bridge.lerobot_cli:import_main",
            "habc-lerobot-train = habc_bridge.lerobot_cli:train_main",
            "habc-serve-lerobot = habc_bridge.lerobot_cli:serve_main",
        ],
    },
)
