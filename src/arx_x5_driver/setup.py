"""ament_python package arx_x5_driver (see package.xml)."""

from setuptools import find_packages, setup

package_name = "arx_x5_driver"

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
            "driver_node = arx_x5_driver.nodes.driver_node:main",
            # NODE_ENTRY_POINTS
        ],
    },
)
