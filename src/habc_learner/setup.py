"""ament_python package habc_learner (see package.xml)."""

from setuptools import find_packages, setup

package_name = "habc_learner"

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
            "habc-main = habc_learner.main_job:main",
            "habc-learn = habc_learner.learn:main",
            "episode_recorder = habc_learner.nodes.recorder_node:main",
            "learner = habc_learner.nodes.learner_node:main",
            "habc-launch = habc_learner.launcher:main",
            "habc-bringup-job = habc_learner.bringup_job:main",
            "habc-protocol = habc_learner.protocol:main",
            "habc-sros2 = habc_learner.sros2:main",
            "habc-inspect = habc_learner.inspect_bag:main",
            # NODE_ENTRY_POINTS
        ],
    },
)
